"""`python -m keras_apm` is the `keras-apm` command."""

import sys

from keras_apm.cli import main

sys.exit(main())
