"""Local node agent: registers a Node and runs the pods bound to it as local processes."""
