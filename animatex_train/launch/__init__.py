"""Launching jobs on clusters: ``animatex-train submit`` (``submit.py``) for the ``slurm/*.sbatch`` scripts."""
