import sys

from agentgraph.controller.operator import main

sys.exit(main())
