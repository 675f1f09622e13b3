import importlib.util

# The live-cluster fixtures are only loaded where the cluster infrastructure exists.
if importlib.util.find_spec("tests.kube_cluster") is not None:
    pytest_plugins = ["tests.kube_cluster"]
