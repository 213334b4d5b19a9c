import sys

from labkit.exercises.build import main

sys.exit(main())
