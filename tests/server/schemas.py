"""Twenty JSON schemas of real-world shape for the constrained-decoding suite."""

from __future__ import annotations

ADDRESS = {
    "type": "object",
    "properties": {
        "street": {"type": "string"},
        "city": {"type": "string"},
        "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
    },
    "required": ["street", "city", "zip"],
}

SCHEMAS: dict[str, tuple[str, dict]] = {
    "person": (
        "Describe a person named Ana, 31 years old.",
        {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 130}},
            "required": ["name", "age"],
        },
    ),
    "nested_address": (
        "Give a customer record with an address in Paris.",
        {
            "type": "object",
            "properties": {"customer": {"type": "string"}, "address": ADDRESS},
            "required": ["customer", "address"],
        },
    ),
    "tags_bounded": (
        "List tags for a blog post about hiking.",
        {
            "type": "object",
            "properties": {
                "tags": {
                    "type": "array",
                    "items": {"type": "string", "pattern": "^[a-z]{2,12}$"},
                    "minItems": 2,
                    "maxItems": 4,
                }
            },
            "required": ["tags"],
        },
    ),
    "enum_status": (
        "What is the status of order 1234?",
        {
            "type": "object",
            "properties": {"order_id": {"type": "integer"}, "status": {"enum": ["pending", "shipped", "delivered"]}},
            "required": ["order_id", "status"],
        },
    ),
    "refs_defs": (
        "Describe a family of two.",
        {
            "$defs": {
                "member": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "role": {"enum": ["parent", "child"]}},
                    "required": ["name", "role"],
                }
            },
            "type": "object",
            "properties": {
                "members": {"type": "array", "items": {"$ref": "#/$defs/member"}, "minItems": 2, "maxItems": 2}
            },
            "required": ["members"],
        },
    ),
    "any_of": (
        "Give a contact: either an email or a phone.",
        {
            "type": "object",
            "properties": {
                "contact": {
                    "anyOf": [
                        {
                            "type": "object",
                            "properties": {"email": {"type": "string", "pattern": "^[a-z]{1,10}@[a-z]{1,10}\\.com$"}},
                            "required": ["email"],
                        },
                        {
                            "type": "object",
                            "properties": {"phone": {"type": "string", "pattern": "^[0-9]{3}-[0-9]{4}$"}},
                            "required": ["phone"],
                        },
                    ]
                }
            },
            "required": ["contact"],
        },
    ),
    "number_bounds": (
        "Rate the movie Inception.",
        {
            "type": "object",
            "properties": {
                "score": {"type": "number", "minimum": 0, "maximum": 10},
                "votes": {"type": "integer", "minimum": 1},
            },
            "required": ["score", "votes"],
        },
    ),
    "optional_fields": (
        "Describe a book.",
        {
            "type": "object",
            "properties": {"title": {"type": "string"}, "subtitle": {"type": "string"}, "pages": {"type": "integer"}},
            "required": ["title"],
        },
    ),
    "boolean_flags": (
        "Is the store open on Sunday and does it deliver?",
        {
            "type": "object",
            "properties": {"open_sunday": {"type": "boolean"}, "delivers": {"type": "boolean"}},
            "required": ["open_sunday", "delivers"],
        },
    ),
    "date_pattern": (
        "When was the meeting? Give a date.",
        {
            "type": "object",
            "properties": {"date": {"type": "string", "pattern": "^20[0-9]{2}-[01][0-9]-[0-3][0-9]$"}},
            "required": ["date"],
        },
    ),
    "array_of_objects": (
        "List two products with prices.",
        {
            "type": "object",
            "properties": {
                "products": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 3,
                    "items": {
                        "type": "object",
                        "properties": {"name": {"type": "string"}, "price": {"type": "number", "minimum": 0}},
                        "required": ["name", "price"],
                    },
                }
            },
            "required": ["products"],
        },
    ),
    "function_call": (
        "Call the weather function for Berlin.",
        {
            "type": "object",
            "properties": {
                "name": {"const": "get_weather"},
                "arguments": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
                    "required": ["city", "unit"],
                },
            },
            "required": ["name", "arguments"],
        },
    ),
    "top_level_array": (
        "Three primary colours, as a JSON array.",
        {
            "type": "array",
            "items": {"enum": ["red", "green", "blue", "yellow"]},
            "minItems": 3,
            "maxItems": 3,
        },
    ),
    "integer_enum": (
        "Pick a priority level.",
        {
            "type": "object",
            "properties": {"priority": {"enum": [1, 2, 3]}},
            "required": ["priority"],
        },
    ),
    "nullable": (
        "Give a user with an optional middle name.",
        {
            "type": "object",
            "properties": {
                "first": {"type": "string"},
                "middle": {"type": ["string", "null"]},
                "last": {"type": "string"},
            },
            "required": ["first", "middle", "last"],
        },
    ),
    "deep_nesting": (
        "Describe a company with a CEO and HQ.",
        {
            "type": "object",
            "properties": {
                "company": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "ceo": {
                            "type": "object",
                            "properties": {
                                "name": {"type": "string"},
                                "since": {"type": "integer", "minimum": 1900, "maximum": 2030},
                            },
                            "required": ["name", "since"],
                        },
                        "hq": ADDRESS,
                    },
                    "required": ["name", "ceo", "hq"],
                }
            },
            "required": ["company"],
        },
    ),
    "no_extra_props": (
        "Give coordinates of Rome.",
        {
            "type": "object",
            "properties": {
                "lat": {"type": "number", "minimum": -90, "maximum": 90},
                "lon": {"type": "number", "minimum": -180, "maximum": 180},
            },
            "required": ["lat", "lon"],
            "additionalProperties": False,
        },
    ),
    "matrix": (
        "A 2x2 identity matrix.",
        {
            "type": "object",
            "properties": {
                "rows": {
                    "type": "array",
                    "minItems": 2,
                    "maxItems": 2,
                    "items": {
                        "type": "array",
                        "minItems": 2,
                        "maxItems": 2,
                        "items": {"type": "integer", "minimum": 0, "maximum": 1},
                    },
                }
            },
            "required": ["rows"],
        },
    ),
    "one_of_shapes": (
        "Describe a shape.",
        {
            "type": "object",
            "properties": {
                "shape": {
                    "oneOf": [
                        {
                            "type": "object",
                            "properties": {"kind": {"const": "circle"}, "radius": {"type": "number", "minimum": 0}},
                            "required": ["kind", "radius"],
                        },
                        {
                            "type": "object",
                            "properties": {"kind": {"const": "square"}, "side": {"type": "number", "minimum": 0}},
                            "required": ["kind", "side"],
                        },
                    ]
                }
            },
            "required": ["shape"],
        },
    ),
    "event": (
        "Create a calendar event for a team lunch.",
        {
            "type": "object",
            "properties": {
                "title": {"type": "string"},
                "time": {"type": "string", "pattern": "^[0-2][0-9]:[0-5][0-9]$"},
                "attendees": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
                "recurring": {"type": "boolean"},
            },
            "required": ["title", "time", "attendees", "recurring"],
        },
    ),
}
