"""The expert server: a bundle's experts in a pool, a dynamic batcher an expert, the FastAPI app (uvicorn) and
the same experts on Ray Serve."""
