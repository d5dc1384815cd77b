"""Models of RD + CCL: frozen timm teacher, projector, OCBE neck, reverse decoder, and RDCCL holding them."""

from ccl.models.decoder import ReverseDecoder, build_decoder
from ccl.models.neck import OCBE, build_neck
from ccl.models.offline_weights import offline_weights_path
from ccl.models.projector import PROJECTORS, Projector, build_projector
from ccl.models.rdccl import RDCCL
from ccl.models.teacher import Teacher, build_teacher

__all__ = [
    "RDCCL",
    "Teacher",
    "Projector",
    "OCBE",
    "ReverseDecoder",
    "PROJECTORS",
    "build_teacher",
    "build_projector",
    "build_neck",
    "build_decoder",
    "offline_weights_path",
]
