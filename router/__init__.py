"""One endpoint over several engine replicas: `python -m router serve --backend HOST:PORT ...`
speaks the engines' public API and sends each request to the replica that likely caches its
prompt's prefix, unless that one is too busy. Uses the client stubs (loompb, client/) and the
engine-free parts of frontend/ (auth, tenants, TLS, settings); no engine code."""
