"""Family modules. Importing this package registers every zoo variant (see ..registry)."""

from . import efficientnet, ghostnet, mobilenet  # noqa: F401
