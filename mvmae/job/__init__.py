"""The batch job from videos to shards (``mvmae extract run``): the plan and its run
(``job.py``), the engines that build its shards behind one small interface (``engine.py``: local
supervised workers, ``workers.py``; Ray, ``ray_engine.py``), the fault records (``faults.py``) and
object storage as OUT (``store.py``, ``publish.py``). ``mvmae.shards`` keeps the format, the writer
and the reader."""
