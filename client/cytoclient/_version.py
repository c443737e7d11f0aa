"""The API version this client speaks, and the client's own version (which follows it)."""

# The server's OpenAPI ``info.version`` (config/settings.py SPECTACULAR_SETTINGS["VERSION"]).
# tests/client/test_drift.py fails when the two differ.
API_VERSION = "1.1.0"

# major.minor follow the API; the patch number is the client's own.
__version__ = "1.1.0"
