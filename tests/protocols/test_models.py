import pytest
from django.core.exceptions import ValidationError

from tests.factories import PointFactory

INVALID_POINTS = [
    ({"register_type": "coil", "data_type": "float32"}, "data_type", "use 'bool'"),
    ({"register_type": "holding", "data_type": "bool"}, "data_type", "use 'bit'"),
    ({"data_type": "bit", "bit": None}, "bit", "bit index"),
    ({"data_type": "uint16", "bit": 3}, "bit", "only applies"),
    ({"scale": 0}, "scale", "Scale 0"),
    ({"address": 65535, "data_type": "float32"}, "address", "65535"),
]


@pytest.mark.parametrize(("changes", "field", "message"), INVALID_POINTS)
def test_point_clean_names_field(alpha, changes, field, message):
    point = PointFactory.build(**changes)

    with pytest.raises(ValidationError) as caught:
        point.clean()

    assert field in caught.value.message_dict
    assert message in " ".join(caught.value.message_dict[field])


def test_point_clean_accepts_bit_of_register(alpha):
    point = PointFactory.build(data_type="bit", bit=15)

    point.clean()

    assert point.register_count == 1
