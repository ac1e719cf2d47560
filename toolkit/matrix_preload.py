"""Imported once by the matrix's fork server (toolkit/matrix.py worker_context): loads the converter stacks
that every forked worker then shares."""

from lwdeploy.matrix import preload_worker_modules

preload_worker_modules()
