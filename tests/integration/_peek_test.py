import sys, collections
sys.path.insert(0, "/work/main/tests/integration")
from test_cache import *
def test_peek(origins, clonegate):
    cg, o = start(clonegate, origins, **{"server.workers": 2})
    t = url("herd", cc="max-age=60", ms="500")
    answers = concurrent_gets(cg.port, t, 400)
    print(collections.Counter(r.header("Cache-Status") for r in answers))
