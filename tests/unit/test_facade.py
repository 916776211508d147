import fedai


def test_every_facade_name_imports():
    for name in fedai.__all__:
        assert getattr(fedai, name) is not None


def test_all_is_sorted():
    assert list(fedai.__all__) == sorted(fedai.__all__)
