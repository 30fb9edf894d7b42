"""Search backends behind one seam: the best rows of an index version for a query vector, under a filter.

``SearchBackend`` (search/base.py) is everything a caller may use of one: ``name``, ``search``, ``vector``,
``close``; every failure is a ``SearchUnavailable``. ``open_backend`` (search/factory.py) is the one place
that knows which backends exist and what each needs. Backends: ``ExactSearch`` (NumPy, exact),
``AnnSearch`` (FAISS HNSW over a memory-mapped file), ``MilvusSearch`` (a Milvus server or Milvus Lite).
"""

from search.base import EVERY_ROW, Candidates, Filter, SearchBackend, SearchUnavailable, top_rows
from search.exact import ExactSearch
from search.factory import BackendSettings, BackendSource, open_backend

__all__ = ["EVERY_ROW", "BackendSettings", "BackendSource", "Candidates", "ExactSearch", "Filter", "SearchBackend",
           "SearchUnavailable", "open_backend", "top_rows"]
