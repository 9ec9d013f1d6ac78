import sys

from bitnetcnn.cli import main

sys.exit(main())
