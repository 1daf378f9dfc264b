"""Test and benchmark support: servers, tiny models and small inputs built through the real writers
(never imported by the library)."""
