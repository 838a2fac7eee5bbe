"""The Pixel Tracking API's query parser (ingest/pixel.py): pure, no server."""

from __future__ import annotations

import json
import random
import struct

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.pixel import (
    GIF,
    GIF_HEADERS,
    MAX_DEPTH,
    MAX_INDEX,
    PixelError,
    PixelQuery,
    event_from_query,
)


def event_of(query: bytes) -> dict:
    return json.loads(event_from_query(query).event)


# --- the vendor's pixel page, its examples as it writes them ------------------------------------------


def test_basic_event_call_from_the_vendor_page() -> None:
    query = b"tc_s=1234&token=abcdef&event_name=page_view&prop1=value1"
    parsed = event_from_query(query)
    assert parsed == PixelQuery(
        site_id="1234", token="abcdef", event=b'{"event_name":"page_view","prop1":"value1"}'
    )


# "Event Call with Objects and Arrays": the JSON the page starts from and the URL it turns it into.
OBJECTS_JSON = """{
  "event_name": "page_view",
  "tc_s": "1234",
  "token": "abcdef",
  "page_type": "product_list",
  "page_name": "Best sellers",
  "user": {
    "id": "12356",
    "email": "toto@domain.fr",
    "consent_categories": [
      "1",
      "3"
    ]
  }
}"""
OBJECTS_QUERY = (
    b"tc_s=1234&token=abcdef&event_name=page_view&page_type=product_list&page_name=Best%20sellers"
    b"&user[id]=12356&user[email]=toto%40domain.fr&user[consent_categories][]=1&user[consent_categories][]=3"
)

# "Manage array of objects (ex: items)".
ITEMS_JSON = """{
  "id": "O_12345",
  "revenue": 16.00,
  "value": 22.53,
  "shipping_amount": 3.33,
  "tax_amount": 3.20,
  "currency": "EUR",
  "user": {
    "id": "12356",
    "email": "toto@domain.fr"
  },
  "items": [
    {
      "id": "SKU_12345",
      "quantity": 1,
      "product": {
        "id": "12345",
        "name": "Trex tshirt",
        "category_1": "clothes",
        "colors": ["red"],
        "price": 9.99
      }
    },
    {
      "id": "SKU_12346",
      "quantity": 1,
      "price": 9.99,
      "product": {
        "id": "12346",
        "name": "Heart tshirt",
        "colors": ["blue", "white"],
        "price": 9.99
      }
    }
  ]
}"""
ITEMS_QUERY = (
    b"id=O_12345&revenue=16.00&value=22.53&shipping_amount=3.33&tax_amount=3.20&currency=EUR&user[id]=12356"
    b"&user[email]=toto%40domain.fr&items[0][id]=SKU_12345&items[0][quantity]=1&items[0][product][id]=12345"
    b"&items[0][product][name]=Trex%20tshirt&items[0][product][category_1]=clothes"
    b"&items[0][product][colors][]=red&items[0][product][price]=9.99&items[1][id]=SKU_12346"
    b"&items[1][quantity]=1&items[1][price]=9.99&items[1][product][id]=12346"
    b"&items[1][product][name]=Heart%20tshirt&items[1][product][colors][]=blue"
    b"&items[1][product][colors][]=white&items[1][product][price]=9.99"
)


def test_objects_and_arrays_example_gives_the_pages_json_without_credentials() -> None:
    parsed = event_from_query(OBJECTS_QUERY)
    expected = json.loads(OBJECTS_JSON)
    del expected["tc_s"], expected["token"]
    # Byte for byte: same keys, same order, consent categories kept as the strings the page shows.
    assert parsed.event == msgspec.json.encode(expected)
    assert (parsed.site_id, parsed.token) == ("1234", "abcdef")


def test_array_of_objects_example_gives_the_pages_json_with_its_numbers() -> None:
    parsed = event_from_query(ITEMS_QUERY)
    # Byte for byte, so 16.00 must be the number 16.0 and quantity the integer 1, as in the page's JSON.
    assert parsed.event == msgspec.json.encode(json.loads(ITEMS_JSON))
    assert (parsed.site_id, parsed.token) == (None, None)


def test_the_same_examples_fully_percent_encoded() -> None:
    # What a producer that encodes everything (brackets too) sends.
    from urllib.parse import quote

    for query in (OBJECTS_QUERY, ITEMS_QUERY):
        pairs = [pair.split(b"=", 1) for pair in query.split(b"&")]
        encoded = "&".join(
            f"{quote(name.decode(), safe='')}={quote(value.decode('ascii'), safe='%')}" for name, value in pairs
        ).encode()
        assert b"[" not in encoded
        assert event_from_query(encoded) == event_from_query(query)


# --- decoding -----------------------------------------------------------------------------------------


def test_percent_decoded_names_and_values() -> None:
    parsed = event_from_query(b"tc%5Fs=7&tok%65n=k%2By&user%5Bid%5D=1&user%5bname%5d=J%C3%A9r%C3%B4me&e%20n=x")
    assert (parsed.site_id, parsed.token) == ("7", "k+y")
    assert json.loads(parsed.event) == {"user": {"id": "1", "name": "Jérôme"}, "e n": "x"}


def test_plus_is_a_space_and_2b_a_plus() -> None:
    assert event_of(b"q=a+b%2Bc&a+b=1") == {"q": "a b+c", "a b": "1"}


def test_empty_values_bare_names_and_empty_pairs() -> None:
    assert event_of(b"&a=&&b&c[]=&") == {"a": "", "b": "", "c": [""]}


def test_malformed_escape_is_kept_as_written() -> None:
    assert event_of(b"a=100%&b=%zz&c=%4") == {"a": "100%", "b": "%zz", "c": "%4"}


def test_empty_query_is_an_empty_event() -> None:
    assert event_from_query(b"") == PixelQuery(site_id=None, token=None, event=b"{}")


def test_empty_credentials_count_as_absent_and_never_reach_the_event() -> None:
    parsed = event_from_query(b"tc_s=&token=&event_name=x")
    assert parsed == PixelQuery(site_id=None, token=None, event=b'{"event_name":"x"}')


# --- structure ----------------------------------------------------------------------------------------


def test_nested_indexed_arrays() -> None:
    assert event_of(b"m[0][0]=a&m[0][1]=b&m[1][0][x]=c&m[1][0][y][]=d") == {
        "m": [["a", "b"], [{"x": "c", "y": ["d"]}]]
    }


def test_sparse_arrays_are_compacted_in_index_order() -> None:
    assert event_of(b"a[5]=five&a[2]=two&a[900]=nine") == {"a": ["two", "five", "nine"]}


def test_push_appends_after_the_highest_index() -> None:
    assert event_of(b"a[]=x&a[5]=y&a[]=z") == {"a": ["x", "y", "z"]}


def test_push_with_nested_keys_makes_one_element_each() -> None:
    assert event_of(b"items[][id]=1&items[][id]=2") == {"items": [{"id": "1"}, {"id": "2"}]}


def test_leading_zeros_in_an_index_are_the_same_index() -> None:
    with pytest.raises(PixelError, match=r"given more than once"):
        event_from_query(b"a[1]=x&a[01]=y")


def test_limits_are_inclusive() -> None:
    assert event_of(f"a[{MAX_INDEX}]=x".encode()) == {"a": ["x"]}
    deep = "a" + "[k]" * MAX_DEPTH
    event = event_of(f"{deep}=x".encode())
    for _ in range(MAX_DEPTH + 1):  # the name, then each bracket group
        event = event["a" if "a" in event else "k"]
    assert event == "x"
    assert event_of(b"&".join([b"a[]=1"] * (MAX_INDEX + 1)))["a"] == ["1"] * (MAX_INDEX + 1)


def test_first_appearance_decides_key_order() -> None:
    assert event_from_query(b"b=1&a[x]=2&c=3&a[y]=4").event == b'{"b":"1","a":{"x":"2","y":"4"},"c":"3"}'


# --- numbers and booleans -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"value=10.5", {"value": 10.5}),
        (b"value=10", {"value": 10}),
        (b"revenue=-3.20", {"revenue": -3.2}),
        (b"value=007", {"value": 7}),
        (b"items[0][quantity]=2&items[0][discount]=0.5", {"items": [{"quantity": 2, "discount": 0.5}]}),
        (b"items[0][product][price]=9.99", {"items": [{"product": {"price": 9.99}}]}),
        (b"cursor_position=12&framerate=29.97", {"cursor_position": 12, "framerate": 29.97}),
        # Not a plain decimal: kept as written, for the workers' type checks to report.
        (b"value=abc", {"value": "abc"}),
        (b"value=1e3", {"value": "1e3"}),
        (b"value=1.", {"value": "1."}),
        (b"value=.5", {"value": ".5"}),
        (b"value=+1", {"value": " 1"}),
        (b"value=%2B1", {"value": "+1"}),
        (b"price=9,99", {"price": "9,99"}),
        (b"value=", {"value": ""}),
        (b"value=1234567890123456", {"value": "1234567890123456"}),  # 16 digits: not exact as a float
        (b"value=123456789012345", {"value": 123456789012345}),
        # Other properties are never converted, whatever they look like.
        (b"user[id]=12356&id=1&zipcode=02108", {"user": {"id": "12356"}, "id": "1", "zipcode": "02108"}),
        (b"user[consent_categories][]=1", {"user": {"consent_categories": ["1"]}}),
        (b"value[]=1", {"value": ["1"]}),  # list elements are not converted
        (b"livestream=true&full_screen=false", {"livestream": True, "full_screen": False}),
        (b"livestream=TRUE&full_screen=1&other=true", {"livestream": "TRUE", "full_screen": "1", "other": "true"}),
    ],
)
def test_typed_properties(query: bytes, expected: dict) -> None:
    parsed = event_from_query(query)
    assert json.loads(parsed.event) == expected
    # Types too (1 == 1.0 == True in Python).
    assert parsed.event == msgspec.json.encode(expected)


# --- refusals -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (b"a=1&a[b]=2", "parameter a[b]: a is already a value (set by another parameter), here an object"),
        (b"a[b]=2&a=1", "parameter a: a is already an object (set by another parameter), here a value"),
        (b"items[0]=x&items[0][id]=y", "parameter items[0][id]: items[0] is already a value"),
        (b"a[b]=1&a[0]=2", "parameter a[0]: a is already an object (set by another parameter), here a list"),
        (b"a[0]=1&a[b]=2", "parameter a[b]: a is already a list (set by another parameter), here an object"),
        (b"a[]=1&a=2", "parameter a: a is already a list"),
        (b"a[1001]=1", "parameter a[1001]: list index 1001 is over 1000"),
        (b"a[99999999999999999999999999999999999999]=1", "is over 1000"),
        (b"&".join([b"a[]=1"] * (MAX_INDEX + 2)), "parameter a[]: a would have more than 1001 elements"),
        (b"a" + b"[b]" * (MAX_DEPTH + 1) + b"=1", "nested more than 10 levels deep"),
        (b"a[b=1", "parameter a[b: '[' without a matching ']'"),
        (b"a]b[=1", "parameter a]b[: ']' without a matching '['"),
        (b"a[b]c=1", "parameter a[b]c: unexpected text after ']'"),
        (b"a[b]]=1", "parameter a[b]]: unexpected text after ']'"),
        (b"a[b[c]]=1", "parameter a[b[c]]: '[' inside brackets"),
        (b"a%5Bb=1", "parameter a[b: '[' without a matching ']'"),  # brackets count after decoding
        (b"=1", "a parameter has an empty name"),
        (b"x=1&=2", "a parameter has an empty name"),
        (b"[a]=1", "parameter [a]: empty name before '['"),
        (b"a=1&a=2", "parameter a is given more than once"),
        (b"user[id]=1&user%5Bid%5D=1", "parameter user[id] is given more than once"),
        (b"a[0]=1&a[0]=2", "parameter a[0] is given more than once"),
        (b"tc_s=1&tc%5Fs=2", "parameter tc_s is given more than once"),
        (b"token=1&token=2", "parameter token is given more than once"),
        (b"token[x]=1", "parameter token must be a plain value, without brackets"),
        (b"tc_s[]=1", "parameter tc_s must be a plain value, without brackets"),
        (b"a=%FF", "the value of parameter a is not valid UTF-8 after percent-decoding (byte 0)"),
        (b"a=ok&%C3=1", "the name of parameter 2 is not valid UTF-8 after percent-decoding"),
        (b"a=\xe9t\xe9", "the value of parameter a is not valid UTF-8"),  # raw bytes, not escaped
        (b"a=%ED%A0%80", "the value of parameter a is not valid UTF-8"),  # an encoded surrogate
    ],
)
def test_refusals_name_the_problem(query: bytes, message: str) -> None:
    with pytest.raises(PixelError) as caught:
        event_from_query(query)
    assert message in str(caught.value)


def test_refusals_never_show_values() -> None:
    for query in (b"token=s3cr3t-key&token=0th3r-key", b"tc_s=1&token=s3cr3t-key&token%5B%5D=0th3r-key"):
        with pytest.raises(PixelError) as caught:
            event_from_query(query)
        assert "s3cr3t" not in str(caught.value) and "0th3r" not in str(caught.value)


def test_long_names_are_cut_in_messages() -> None:
    with pytest.raises(PixelError) as caught:
        event_from_query(b"a" * 5000 + b"[b=1")
    assert len(str(caught.value)) < 200


# --- nothing but PixelError, whatever comes in --------------------------------------------------------


def _check_any(query: bytes) -> None:
    try:
        parsed = event_from_query(query)
    except PixelError as exc:
        assert str(exc)
        return
    assert isinstance(json.loads(parsed.event), dict)


def test_random_bracket_soup_only_raises_pixel_error() -> None:
    rng = random.Random(13)
    alphabet = "[]=&%a1+0"
    outcomes = {"ok": 0, "refused": 0}
    for _ in range(5000):
        query = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24))).encode()
        try:
            parsed = event_from_query(query)
        except PixelError:
            outcomes["refused"] += 1
            continue
        assert isinstance(json.loads(parsed.event), dict)
        outcomes["ok"] += 1
    # The soup exercises both paths, not only one of them.
    assert outcomes["ok"] > 500 and outcomes["refused"] > 500


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_only_raise_pixel_error(query: bytes) -> None:
    _check_any(query)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "0", "1", "[", "]", "[]", "[0]", "[a]", "=", "&", "%5B", "%5D"])))
def test_bracket_tokens_only_raise_pixel_error(parts: list[str]) -> None:
    _check_any("".join(parts).encode())


# --- the GIF ------------------------------------------------------------------------------------------


def test_gif_is_a_transparent_1x1_gif89a() -> None:
    assert GIF[:6] == b"GIF89a"
    width, height, flags, _background, _aspect = struct.unpack("<HHBBB", GIF[6:13])
    assert (width, height) == (1, 1)
    assert flags & 0x80  # a global color table follows
    pos = 13 + 3 * (2 ** ((flags & 0x07) + 1))
    transparent_index = None
    pixels = None
    while GIF[pos] != 0x3B:  # trailer
        if GIF[pos] == 0x21:  # extension: label, then sub-blocks
            label = GIF[pos + 1]
            pos += 2
            if label == 0xF9:
                assert GIF[pos] == 4
                packed, _delay, index = struct.unpack("<BHB", GIF[pos + 1 : pos + 5])
                if packed & 0x01:
                    transparent_index = index
            while GIF[pos]:
                pos += GIF[pos] + 1
            pos += 1
        else:
            assert GIF[pos] == 0x2C  # image descriptor
            left, top, w, h, image_flags = struct.unpack("<HHHHB", GIF[pos + 1 : pos + 10])
            assert (left, top, w, h, image_flags) == (0, 0, 1, 1, 0)
            min_code_size = GIF[pos + 10]
            pos += 11
            data = b""
            while GIF[pos]:
                data += GIF[pos + 1 : pos + 1 + GIF[pos]]
                pos += GIF[pos] + 1
            pos += 1
            # LZW, codes of min_code_size + 1 bits, least significant bit first: clear, one pixel, end.
            bits = int.from_bytes(data, "little")
            size = min_code_size + 1
            codes = [(bits >> (size * i)) & ((1 << size) - 1) for i in range(3)]
            clear = 1 << min_code_size
            assert codes[0] == clear and codes[2] == clear + 1
            pixels = [codes[1]]
    assert pos == len(GIF) - 1  # nothing after the trailer
    assert len(GIF) == 43
    assert pixels == [transparent_index] == [0]


def test_gif_headers() -> None:
    headers = dict(GIF_HEADERS)
    assert len(headers) == len(GIF_HEADERS)  # no header twice
    assert all(name == name.lower() for name in headers)  # ASGI wants lower-case names
    assert headers == {
        b"content-type": b"image/gif",
        b"content-length": str(len(GIF)).encode(),
        b"cache-control": b"no-store, no-cache, must-revalidate, max-age=0",
        b"pragma": b"no-cache",
        b"expires": b"0",
    }
