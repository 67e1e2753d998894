"""circuitsteer: circuit-targeted activation engineering on transformer language models.

Example:
    >>> import circuitsteer as cs
    >>> model = cs.load_model("toy-ioi")            # doctest: +SKIP
    >>> cs.parse_node("a9.h9").layer
    9
"""

from circuitsteer import analysis as analysis
from circuitsteer import circuit as circuit
from circuitsteer import discovery as discovery
from circuitsteer import engine as engine
from circuitsteer import errors as errors
from circuitsteer import formats as formats
from circuitsteer import metrics as metrics
from circuitsteer import nodes as nodes
from circuitsteer import report as report
from circuitsteer import runner as runner
from circuitsteer import spec as spec
from circuitsteer import tasks as tasks
from circuitsteer import vectors as vectors
from circuitsteer.circuit import Circuit as Circuit
from circuitsteer.circuit import CircuitEdge as CircuitEdge
from circuitsteer.circuit import full_edge_graph as full_edge_graph
from circuitsteer.circuit import load_circuit as load_circuit
from circuitsteer.circuit import shipped_circuits as shipped_circuits
from circuitsteer.discovery import DiscoveryError as DiscoveryError
from circuitsteer.errors import AnalysisError as AnalysisError
from circuitsteer.errors import BackendUnavailableError as BackendUnavailableError
from circuitsteer.errors import CircuitFormatError as CircuitFormatError
from circuitsteer.errors import CircuitSteerError as CircuitSteerError
from circuitsteer.errors import InterventionError as InterventionError
from circuitsteer.errors import ModelNotAvailableError as ModelNotAvailableError
from circuitsteer.errors import NodeNameError as NodeNameError
from circuitsteer.errors import PositionError as PositionError
from circuitsteer.errors import ReportError as ReportError
from circuitsteer.errors import RunError as RunError
from circuitsteer.errors import ShapeMismatchError as ShapeMismatchError
from circuitsteer.errors import SpecError as SpecError
from circuitsteer.errors import TaskError as TaskError
from circuitsteer.errors import UnsupportedArchitectureError as UnsupportedArchitectureError
from circuitsteer.errors import UntrustedPickleError as UntrustedPickleError
from circuitsteer.interventions import Ablate as Ablate
from circuitsteer.interventions import Add as Add
from circuitsteer.interventions import Patch as Patch
from circuitsteer.interventions import ProjectOut as ProjectOut
from circuitsteer.interventions import Scale as Scale
from circuitsteer.interventions import Site as Site
from circuitsteer.models import Model as Model
from circuitsteer.models import load_model as load_model
from circuitsteer.models import random_gpt2 as random_gpt2
from circuitsteer.models import random_model as random_model
from circuitsteer.models import zoo_descriptions as zoo_descriptions
from circuitsteer.models import zoo_names as zoo_names
from circuitsteer.nodes import ModelShape as ModelShape
from circuitsteer.nodes import parse_edge as parse_edge
from circuitsteer.nodes import parse_node as parse_node
from circuitsteer.vectors import SteeringVector as SteeringVector
from circuitsteer.vectors import VectorError as VectorError
from circuitsteer.vectors import VectorMismatchError as VectorMismatchError

__version__ = "0.1.0"

__all__ = [
    # modules
    "analysis", "circuit", "discovery", "engine", "errors", "formats", "metrics", "nodes", "report", "runner", "spec", "tasks", "vectors",
    # models
    "Model", "ModelShape", "load_model", "random_gpt2", "random_model", "zoo_descriptions",
    "zoo_names",
    # names and circuits
    "Circuit", "CircuitEdge", "full_edge_graph", "load_circuit", "parse_edge", "parse_node",
    "shipped_circuits",
    # interventions and steering vectors
    "Ablate", "Add", "Patch", "ProjectOut", "Scale", "Site", "SteeringVector",
    # typed errors (every one a CircuitSteerError)
    "AnalysisError", "CircuitFormatError", "DiscoveryError", "CircuitSteerError", "InterventionError",
    "ModelNotAvailableError", "NodeNameError", "PositionError", "ShapeMismatchError", "TaskError",
    "UnsupportedArchitectureError", "UntrustedPickleError", "VectorError", "VectorMismatchError",
    "SpecError", "RunError", "BackendUnavailableError", "ReportError",
]  # fmt: skip
