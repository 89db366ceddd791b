from trilemma_mymodel import MyModel

from trilemma.testing import check_model_contract


def test_contract():
    check_model_contract(MyModel, {"hidden": 16}, expected_nfe={"default": 1})
