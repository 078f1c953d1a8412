import sys

from piper_gpu_server.serve import main

sys.exit(main())
