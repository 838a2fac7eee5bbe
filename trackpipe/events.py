"""The catalogue of standard events (docs/CONTRACT.md §4): which properties each requires and
the values some of them may take. Workers check events against it (workers.standard); destinations
that map to a vendor's events read it too.
"""

from __future__ import annotations

# event_name -> (always required, required only alongside its partner: see check_standard_event)
STANDARD_EVENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "add_payment_info": (("payment_method", "user"), ("currency",)),
    "add_shipping_info": (("currency", "value", "user", "items"), ()),
    "add_to_cart": (("user", "items"), ("value", "currency")),
    "add_to_wishlist": (("user", "items"), ()),
    "begin_checkout": (("revenue", "value", "currency", "user", "items"), ()),
    "generate_lead": (("user",), ("currency",)),
    "login": (("user",), ()),
    "sign_up": (("user",), ()),
    "page_view": (("page_type", "user"), ()),
    "purchase": (("id", "type", "value", "revenue", "payment_method", "currency", "status", "user", "items"), ()),
    "refund": (("id", "user", "revenue", "value", "currency", "type"), ()),
    "remove_from_cart": (("user", "items"), ()),
    "view_cart": (("user", "items"), ()),
    "search": (("search_term", "user"), ()),
    "select_content": (("user",), ()),
    "select_item": (("items",), ()),
    "view_item": (("user", "items"), ("value", "currency")),
    "view_item_list": (("user", "items"), ()),
}

PURCHASE_STATUSES = frozenset(
    {
        "canceled",
        "delivered",
        "in_progress",
        "partially_delivered",
        "partially_returned",
        "partially_shipped",
        "pending_shipment",
        "returned",
        "shipped",
        "pending",
    }
)
PAYMENT_METHODS = frozenset(
    {
        "by_invoice",
        "by_bank_transfer_in_advance",
        "card",
        "check_in_advance",
        "cod",
        "coupon",
        "direct_debit",
        "online_payment_system",
        "other",
    }
)


ITEM_KEYS = ("id", "quantity", "product")
PRODUCT_KEYS = ("name", "price")
