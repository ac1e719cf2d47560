"""Family modules. Importing this package registers every zoo variant (see ..registry)."""

from . import (efficientnet, fbnet, ghostnet, mixnet, mnasnet, mobilenet, senet, shufflenet,  # noqa: F401
               condensenet, dicenet, edgevit, micronet, mobilevit, nas_cells, squeezenet)
