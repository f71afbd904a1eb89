from bench.load_times import load_seconds

#: Lines as tritonserver 2.51 logs a start (two models loading at once, an ensemble after them, other lines between).
LOG = """\
I1207 06:20:00.100000 1234 model_lifecycle.cc:472] "loading: dlrm_router:1"
I1207 06:20:00.100500 1234 model_lifecycle.cc:472] "loading: dlrm_dense:1"
I1207 06:20:00.120000 1234 backend.cc:1] "recgen native step 'router' for model 'dlrm_router'"
I1207 06:20:00.130000 1234 model_lifecycle.cc:838] "successfully loaded 'dlrm_router'"
W1207 06:20:00.200000 1234 something.cc:1] "unrelated warning"
I1207 06:20:00.480500 1234 model_lifecycle.cc:838] "successfully loaded 'dlrm_dense'"
I1207 06:20:00.490000 1234 model_lifecycle.cc:472] "loading: dlrm:1"
I1207 06:20:00.491000 1234 model_lifecycle.cc:838] "successfully loaded 'dlrm'"
a line without a timestamp
"""


def test_every_model_load_is_timed_from_its_own_lines() -> None:
    took = load_seconds(LOG)
    assert took.keys() == {"dlrm_router", "dlrm_dense", "dlrm"}
    assert abs(took["dlrm_router"] - 0.03) < 1e-9
    assert abs(took["dlrm_dense"] - 0.38) < 1e-9
    assert abs(took["dlrm"] - 0.001) < 1e-9
