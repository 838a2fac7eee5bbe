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
    # Campaign tracking (events reference, campaign analytics module).
    "ad_click": (("user", "medium", "source"), ()),
    "ad_view": (("user", "medium", "source"), ()),
    # The e-commerce page lists their parameters (items, promotion_id, promotion_name, creative_name,
    # creative_slot, location_id) without marking any required: only their types are checked.
    "select_promotion": ((), ()),
    "view_promotion": ((), ()),
}

# The 29 video events (events reference, video events), by family. Each family's properties table
# says what it requires.
VIDEO_PLAYBACK_EVENTS = (
    "video_start",
    "video_pause",
    "video_error",
    "video_buffer_start",
    "video_buffer_complete",
    "video_seek_start",
    "video_seek_complete",
    "video_resume",
    "video_complete",
)
VIDEO_CONTENT_EVENTS = (
    "video_content_start",
    "video_content_playing",
    "video_content_quarter_reached",
    "video_content_complete",
)
VIDEO_AD_EVENTS = (
    "video_ad_start",
    "video_ad_playing",
    "video_ad_stop",
    "video_ad_complete",
    "video_ad_skip",
    "video_ad_break_start",
    "video_ad_break_complete",
    "video_ad_click",
)
VIDEO_SETTINGS_EVENTS = (
    "video_volume",
    "video_speed",
    "video_subtitle_on",
    "video_subtitle_off",
    "video_fullscreen_on",
    "video_fullscreen_off",
    "video_quality",
    "video_share",
)
VIDEO_EVENTS = VIDEO_PLAYBACK_EVENTS + VIDEO_CONTENT_EVENTS + VIDEO_AD_EVENTS + VIDEO_SETTINGS_EVENTS

_PLAYBACK = ("video_session_id", "content_asset_id", "cursor_position", "total_length")
for _name in VIDEO_PLAYBACK_EVENTS:
    # The page: cursor_position is "not required in video_buffer_start and video_buffer_complete".
    _required = _PLAYBACK if "buffer" not in _name else tuple(k for k in _PLAYBACK if k != "cursor_position")
    STANDARD_EVENTS[_name] = (_required, ())
for _name in VIDEO_CONTENT_EVENTS:
    STANDARD_EVENTS[_name] = (("video_session_id", "content_asset_id", "cursor_position", "total_length"), ())
for _name in VIDEO_AD_EVENTS:
    STANDARD_EVENTS[_name] = (("video_session_id", "ad_asset_id", "ad_pod_id", "cursor_position", "total_length"), ())
# Settings: bitrate always; sound, full_screen and image_quality only in the event about them.
_SETTING_OF = {
    "video_volume": ("sound",),
    "video_fullscreen_on": ("full_screen",),
    "video_fullscreen_off": ("full_screen",),
    "video_quality": ("image_quality",),
}
for _name in VIDEO_SETTINGS_EVENTS:
    STANDARD_EVENTS[_name] = (
        (
            "video_session_id",
            "content_asset_id",
            "cursor_position",
            "total_length",
            "bitrate",
            *_SETTING_OF.get(_name, ()),
        ),
        (),
    )

# Required properties that may be null: total_length is null for a livestream.
NULLABLE = frozenset({"total_length"})

# Types the events reference gives (checked wherever the property is present in a standard event):
# root properties of every standard event, of video events, of an items entry and of its product.
NUMBER_PROPERTIES = (
    "value",
    "revenue",
    "tax",
    "tax_amount",
    "shipping",
    "shipping_amount",
    "discount_value",
    "original_value",
    "original_revenue",
    "original_tax_amount",
    "returned_value",
    "returned_quantity",
    "cancelled_value",
    "cancelled_quantity",
)
VIDEO_NUMBER_PROPERTIES = (
    "cursor_position",
    "seek_position",
    "total_length",
    "bitrate",
    "framerate",
    "sound",
    "pod_position",
    "pod_length",
    "ad_quartile",
)
VIDEO_BOOLEAN_PROPERTIES = ("full_screen", "ad_enabled", "livestream", "full_episode")
ITEM_NUMBER_PROPERTIES = (
    "quantity",
    "value",
    "discount",
    "list_position",
    "cancelled_value",
    "cancelled_quantity",
    "original_value",
    "returned_value",
    "returned_quantity",
)
PRODUCT_NUMBER_PROPERTIES = ("price",)

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

del _name, _required
