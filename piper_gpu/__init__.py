"""piper-gpu-deploy: the users' GPU plan for their Piper TTS service, as a pyinfra packaged deploy.

    from piper_gpu import deploy_piper_gpu, undeploy_piper_gpu

Imported lazily, so that the CLI, the lock tools and the settings load without the deploy's steps.
"""

__all__ = ["deploy_piper_gpu", "undeploy_piper_gpu"]


def __getattr__(name):
    if name in __all__:
        from piper_gpu import deploys

        return getattr(deploys, name)
    raise AttributeError(f"module 'piper_gpu' has no attribute {name!r}")
