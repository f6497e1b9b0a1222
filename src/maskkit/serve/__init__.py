"""``maskkit serve``: an HTTP API (FastAPI on uvicorn) and a web page over a loaded model.

* :mod:`~maskkit.serve.app` – ``create_app(predictor, settings)``: endpoints, errors, API key;
* :mod:`~maskkit.serve.batching` – the dynamic batcher (a worker thread, a bounded queue);
* :mod:`~maskkit.serve.uploads` – the body-size limit and bounded image decoding;
* :mod:`~maskkit.serve.results` – JSON instances (RLE/polygons) and overlay PNGs;
* :mod:`~maskkit.serve.metrics` – Prometheus metrics; :mod:`~maskkit.serve.schemas` – response models;
* :mod:`~maskkit.serve.server` – loading the model and running uvicorn;
* ``static/`` – the page (``/``) and the API docs page (``/docs``), no CDN.
"""
