"""The kernel gateway service: Jupyter Server's kernels API over our managers."""
