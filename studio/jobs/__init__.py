"""The jobs and where they run: the job queue (`queue.py`: clip and film jobs, their records, one thread per
worker), the GPU worker contract and the local worker (`workers.py`), and the workers in other processes:
a clip split over several GPUs (`split.py`), Ray actors (`ray_actors.py`) and ZeroGPU (`zerogpu.py`). It knows
nothing of the page."""
