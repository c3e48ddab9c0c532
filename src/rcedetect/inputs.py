"""Reading untrusted input files (`rcedetect detect --input`) without unpickling and within size limits.

    read_array(path) -> numpy array        .png, .npy, .pt, .safetensors

* Nothing is ever unpickled by us. `.npy` is read with `allow_pickle=False` after its header has been
  parsed (object arrays are refused by their dtype, before any data is read). `.pt` files are torch's
  zip archives whose `data.pkl` is scanned opcode by opcode with `pickletools` (which decodes, never
  executes): only the globals a plain tensor needs are allowed, then torch's restricted loader
  (`weights_only=True`) reads it. A legacy / raw pickle, or a `.pt` holding anything else, gets
  rcedetect's own one-line refusal naming the accepted formats, never torch's advice to unpickle.
* Size limits against decompression bombs and oversized inputs, checked on headers before any pixel
  is decoded or any array allocated: `MAX_INPUT_BYTES` of decoded data (1 GiB) and `MAX_IMAGE_PIXELS`
  per image file (4096 x 4096; the models take 28 x 28 or 32 x 32).
"""

import os
import pickletools
import zipfile
from pathlib import Path

import numpy as np

from .errors import InputError

MAX_INPUT_BYTES = 1 << 30
MAX_IMAGE_PIXELS = 4096 * 4096
FORMATS = ".png (8-bit L or RGB), .npy (numeric, np.save), .pt (one tensor, torch.save) or .safetensors"
# The only globals `torch.save(tensor)` writes into data.pkl (protocol 2): the tensor rebuilders and
# storage types. Anything else (a class, a function, a module) means the file is not a plain tensor.
_TORCH_GLOBALS = {
    ("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"), ("collections", "OrderedDict"), ("torch", "device"),
}
_STORAGES = {"DoubleStorage", "FloatStorage", "HalfStorage", "BFloat16Storage", "LongStorage", "IntStorage",
             "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage", "UntypedStorage"}


def _size_text(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.1f} MiB"


def _check_bytes(path: Path, nbytes: int, what: str) -> None:
    if nbytes > MAX_INPUT_BYTES:
        raise InputError(f"{path} {what} {_size_text(nbytes)}, above rcedetect's input limit of "
                         f"{_size_text(MAX_INPUT_BYTES)}: split the batch into smaller files")


# ------------------------------------------------------------------------------------------- PNG
def _check_pixels(path: Path, width: int, height: int) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(f"{path} claims {width}x{height} pixels, above rcedetect's limit of {MAX_IMAGE_PIXELS} "
                         f"pixels per image (a decompression bomb?): pass images of the model's size")


def read_png(path) -> np.ndarray:
    """(1, C, H, W) uint8 of an 8-bit grayscale (L) or RGB image; the size is checked from the header
    before any pixel is decoded."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":  # the size, before PIL sees the file
        _check_pixels(path, int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big"))
    try:
        with Image.open(path) as image:  # reads the header only
            _check_pixels(path, *image.size)
            if image.mode not in ("L", "RGB"):
                raise InputError(f"{path} has PNG mode {image.mode}: save it as 8-bit grayscale (L) or RGB "
                                 f"without alpha")
            array = np.asarray(image)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path} is not a readable image ({' '.join(str(exc).split())}): pass {FORMATS}") from exc
    # Always (1, C, H, W): the mode, not the shape, says how many channels a PNG has.
    return array[None, None] if array.ndim == 2 else array.transpose(2, 0, 1)[None]  # HWC -> CHW


# ------------------------------------------------------------------------------------------- NPY
def npy_header(path):
    """(shape, dtype, data offset) from an .npy header, without reading the data."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            return shape, dtype, f.tell()
    except (ValueError, OSError, SyntaxError, EOFError) as exc:
        raise InputError(f"{path} is not a valid .npy file ({' '.join(str(exc).split())}): pass {FORMATS}") from exc


def read_npy(path) -> np.ndarray:
    """A numeric array from an .npy file; object arrays (pickles), oversized or truncated files refused
    from the header, before any data is read."""
    path = Path(path)
    shape, dtype, offset = npy_header(path)
    if dtype.hasobject:
        raise InputError(f"{path} is an object (pickled) .npy array, not a plain numeric one: rcedetect never "
                         f"unpickles input files; save "
                         f"a numeric array with np.save(path, array.astype('float32')), or pass {FORMATS}")
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    _check_bytes(path, nbytes, f"holds a {'x'.join(map(str, shape))} {dtype} array of")
    available = os.path.getsize(path) - offset
    if available < nbytes:
        raise InputError(f"{path} is truncated: its header promises {nbytes} bytes of data, the file has "
                         f"{max(available, 0)}: save it again with np.save")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(f"{path} is not a plain numeric .npy array ({' '.join(str(exc).split())}): save it "
                         f"with np.save(path, array)") from exc


# -------------------------------------------------------------------------------------------- PT
def _pickle_globals(data: bytes):
    """The (module, name) pairs a pickle would import, found by decoding its opcodes (nothing runs)."""
    strings, found = [], []
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
                           "BINSTRING", "STRING"):
            strings.append(arg)
        elif opcode.name == "GLOBAL":
            module, _, name = arg.partition(" ")
            found.append((module, name))
        elif opcode.name == "STACK_GLOBAL":
            found.append(tuple(strings[-2:]) if len(strings) >= 2 else ("?", "?"))
        elif opcode.name == "INST":
            found.append(tuple(arg.split(" ", 1)))
    return found


def _refuse_pickle(path: Path, why: str):
    raise InputError(f"{path} is {why}: rcedetect never unpickles input files; pass a single tensor saved with "
                     f"torch.save(tensor, path), or {FORMATS}")


def read_pt(path) -> np.ndarray:
    """A tensor saved with `torch.save(tensor, path)`, as numpy; anything that is not one tensor in torch's
    zip format is refused without being unpickled."""
    import torch

    path = Path(path)
    if not zipfile.is_zipfile(path):
        _refuse_pickle(path, "a raw or legacy pickle file, not a torch zip archive")
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            _check_bytes(path, sum(m.file_size for m in members), "unpacks to")
            pickles = [m for m in members if m.filename.endswith("/data.pkl") or m.filename == "data.pkl"]
            if len(pickles) != 1:
                _refuse_pickle(path, "a zip archive without exactly one data.pkl (not a torch.save file)")
            data = archive.read(pickles[0])
    except (zipfile.BadZipFile, OSError, NotImplementedError) as exc:
        raise InputError(f"{path} is not a readable torch archive ({exc}): pass {FORMATS}") from exc
    try:
        imported = _pickle_globals(data)
    except Exception as exc:  # noqa: BLE001 -- any decoding failure means a malformed pickle
        _refuse_pickle(path, f"a malformed pickle ({type(exc).__name__})")
    foreign = [f"{m}.{n}" for m, n in imported if (m, n) not in _TORCH_GLOBALS
               and not (m == "torch" and n in _STORAGES)]
    if foreign:
        _refuse_pickle(path, f"a pickle that imports {', '.join(sorted(set(foreign))[:3])} (not a plain tensor)")
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- torch's messages advise unpickling: never show them
        _refuse_pickle(path, f"not a tensor file torch's safe loader can read ({type(exc).__name__})")
    if not torch.is_tensor(value):
        raise InputError(f"{path} holds a {type(value).__name__}, not a tensor: save a single (N, C, H, W) tensor "
                         f"with torch.save(tensor, path)")
    if value.dtype == torch.bfloat16:
        value = value.float()
    return value.detach().numpy()


# ----------------------------------------------------------------------------------- safetensors
def read_safetensors(path) -> np.ndarray:
    """The only tensor of a .safetensors file, or its `x_adv` (a file of `rcedetect attack`)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            key = "x_adv" if "x_adv" in keys else keys[0] if len(keys) == 1 else None
            if key is None:
                raise InputError(f"{path} holds {len(keys)} tensors ({', '.join(keys[:5])}) and no x_adv: save "
                                 f"one (N, C, H, W) tensor")
            piece = f.get_slice(key)
            shape, dtype = piece.get_shape(), piece.get_dtype()
            itemsize = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
                        "I16": 2, "U16": 2}.get(dtype, 1)
            _check_bytes(path, int(np.prod(shape, dtype=object)) * itemsize, f"holds a tensor {key} of")
            tensor = f.get_tensor(key)
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path} is not a readable safetensors file ({' '.join(str(exc).split())}): "
                         f"pass {FORMATS}") from exc
    import torch

    if tensor.dtype in (torch.float16, torch.bfloat16):
        tensor = tensor.float()
    return tensor.numpy()


READERS = {".png": read_png, ".npy": read_npy, ".pt": read_pt, ".safetensors": read_safetensors}


def read_array(path) -> np.ndarray:
    """The array in an input file, read as its extension says (`READERS`), with one-line `InputError`s."""
    path = Path(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise InputError(f"{path}: unsupported file type {path.suffix or '(none)'}: pass {FORMATS}")
    if not path.is_file():
        raise InputError(f"{path} does not exist: check the --input path")
    return reader(path)


__all__ = ["FORMATS", "MAX_IMAGE_PIXELS", "MAX_INPUT_BYTES", "READERS", "npy_header", "read_array", "read_npy",
           "read_png", "read_pt", "read_safetensors"]
