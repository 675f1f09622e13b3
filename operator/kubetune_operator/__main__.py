import sys

from kubetune_operator.main import main

sys.exit(main())
