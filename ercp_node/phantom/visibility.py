"""Rose's criterion for the phantom's `--stone-label seen`: the one definition lives in ercp_node/visibility.py,
where the node's stone decision reads it too (model/ does not import the phantom)."""
from ..visibility import ROSE_K, is_seen, local_cnr, rose_k, unseen_stones  # noqa: F401
