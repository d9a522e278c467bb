"""Request inspection records: what lbd refused (or let through under a url_policy) and why.

Rules: `store.CaptureStore` keeps, per frontend, counts per (reason, module) with the first and
last time seen and the last few samples; `mask` builds the samples' excerpts so that no query
value, cookie value, credential or body byte is ever kept. Nothing here does I/O; the store is
owned by the frontend's runtime and kept across reloads by frontend name, like its counters.
"""
