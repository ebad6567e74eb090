"""The Ray host: KServe's ModelServer fronts (the KServe host's processes, ``serving/kserve/``) in front of one Ray
Serve deployment per route (``replica.py``), placed by Ray across a cluster's nodes: the launcher part
(``host.py``), the process that owns the cluster and the deployments (``owner.py``), and the front's queue per route
that sends batches to the replicas and retries on another one when a replica dies (``lane.py``)."""
