//! PyTorch checkpoints (`torch.save`, PyTorch ≥ 1.6) read as named tensors, without Python. Such a file is a zip
//! archive of `data.pkl`, a pickle of the saved object whose tensors point at storages, and one uncompressed entry
//! per storage (`data/0`, `data/1`, …). candle's pickle VM parses the pickle into a tree of objects and never runs
//! anything; this module walks that tree itself (candle's `read_pth_tensor_info` skips what it does not know, and
//! a partial model is worse than an error) and refuses any callable outside the few torch uses to rebuild tensors,
//! the rule of `torch.load(weights_only=True)`: a checkpoint is data, never code.
use crate::error::{Error, Result};
use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;
use zip::result::ZipError;
use zip::{CompressionMethod, ZipArchive};

/// A failure's message, without the file's path, which [`load_pth`] puts first.
type Fallible<T> = std::result::Result<T, String>;

/// A pickled dict's (key, value) pairs.
type Entries = Vec<(Object, Object)>;

/// The tensors of a `torch.save` file, and where in it they were.
pub struct PthWeights {
    pub tensors: HashMap<String, Tensor>,
    /// The entry of the file's top-level dict that held them (`ema`, `model`, `state_dict`, or the key asked
    /// for); None when the file is a flat state dict.
    pub key: Option<String>,
}

/// Where a nested checkpoint keeps its weights, in the order they are preferred: DiT's `sample.py` takes `ema`
/// from a `train.py` checkpoint (`{"model", "ema", "opt", "args"}`); others save `model` or `state_dict`.
pub const PREFERRED_KEYS: [&str; 3] = ["ema", "model", "state_dict"];

/// Prefixes every name gets from a wrapper, stripped as `torch.nn.modules.utils.consume_prefix_in_state_dict_if_present`
/// does: DistributedDataParallel's `module.` and torch.compile's `_orig_mod.`.
const WRAPPER_PREFIXES: [&str; 2] = ["module.", "_orig_mod."];

/// The first pickle of PyTorch's legacy format: protocol 2, then the magic number 0x1950a86a20f9469cfc6c.
const LEGACY_MAGIC: [u8; 14] = [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// Deeper nesting than any checkpoint has (DiT's optimizer state is 5 levels): a pickle built to exhaust the stack.
const MAX_DEPTH: usize = 64;

/// Whether `path` should be read as a `torch.save` file: it starts as one (a zip archive, or a pickle, as the
/// legacy format does), or it is named like one (`.pt`, `.pth`, `.ckpt`, `.bin`) and does not start as a
/// safetensors file (an 8-byte header length, then `{`), so that a broken `.pt` gets this reader's diagnosis.
pub fn is_torch_file(path: &Path) -> Result<bool> {
    let mut head = Vec::with_capacity(9);
    let file = File::open(path).map_err(|e| Error::checkpoint(path, format!("cannot be opened: {e}")))?;
    file.take(9).read_to_end(&mut head).map_err(|e| Error::checkpoint(path, format!("cannot be read: {e}")))?;
    if head.get(8) == Some(&b'{') {
        return Ok(false);
    }
    let named = path.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e, "pt" | "pth" | "ckpt" | "bin"));
    Ok(head.starts_with(b"PK\x03\x04") || head.first() == Some(&0x80) || named)
}

/// The tensors of the `torch.save` file `path`: a flat state dict, or the state dict under `key` of a dict of
/// them (by default the first of [`PREFERRED_KEYS`] it has), each name without a wrapper's prefix, each tensor
/// in its stored dtype (bool as U8, int8 widened to I16) on `device`.
pub fn load_pth(path: &Path, key: Option<&str>, device: &Device) -> Result<PthWeights> {
    read(path, key, device).map_err(|msg| Error::checkpoint(path, msg))
}

fn read(path: &Path, key: Option<&str>, device: &Device) -> Fallible<PthWeights> {
    let mut file = File::open(path).map_err(|e| format!("cannot be opened: {e}"))?;
    let len = file.metadata().map_err(|e| format!("cannot be read: {e}"))?.len();
    let mut head = Vec::with_capacity(LEGACY_MAGIC.len());
    (&mut file).take(LEGACY_MAGIC.len() as u64).read_to_end(&mut head).map_err(|e| format!("cannot be read: {e}"))?;
    if head.starts_with(&LEGACY_MAGIC) {
        return Err(legacy_format(path));
    }
    if head.get(8) == Some(&b'{') {
        return Err("is a safetensors file, not a torch.save one: read it as safetensors".into());
    }
    if head.first() == Some(&0x80) {
        return Err("is a pickle but not a torch.save file (neither a zip archive nor PyTorch's legacy format): \
                    save the weights with torch.save(model.state_dict(), path)"
            .into());
    }
    if !head.starts_with(b"PK\x03\x04") {
        let what = if len == 0 { "is empty" } else { "starts with neither a zip header nor a pickle" };
        return Err(format!("is not a PyTorch checkpoint: torch.save writes a zip archive, and this file {what}; check the path"));
    }
    let zip = ZipArchive::new(BufReader::new(file)).map_err(|e| {
        format!("is truncated or damaged: it starts as a zip archive but its directory cannot be read ({e}); download or copy it again")
    })?;
    let mut archive = Archive { zip, len };
    let prefix = archive.prefix()?;
    archive.check_byte_order(&prefix)?;

    let mut buf = vec![];
    let mut pickle = archive.entry(&format!("{prefix}/data.pkl"), &mut buf)?;
    let mut stack = Stack::empty();
    stack.read_loop(&mut pickle).map_err(|e| {
        format!(
            "its data.pkl is not a pickle sadm reads ({}): sadm reads pickle protocol 2, torch.save's default; \
             re-save it with torch.save(state_dict, path) without pickle_protocol",
            message(e)
        )
    })?;
    for obj in stack.stack() {
        check_callables(obj, 0)?;
    }
    let root = stack.finalize().map_err(|e| format!("its data.pkl holds no object ({})", message(e)))?;
    let (entries, key) = select(root, key)?;
    let refs = tensor_refs(entries, key.as_deref())?;

    // Each storage is read once, for all the tensors that view it.
    let mut by_storage: BTreeMap<String, Vec<(String, TensorRef)>> = BTreeMap::new();
    for (name, r) in refs {
        by_storage.entry(r.storage.clone()).or_default().push((name, r));
    }
    let mut tensors = HashMap::new();
    for (storage, views) in by_storage {
        let bytes = archive.entry(&format!("{prefix}/data/{storage}"), &mut buf)?;
        for (name, r) in views {
            let t = r.tensor(bytes, device).map_err(|e| format!("tensor '{name}' (storage data/{storage}): {e}"))?;
            tensors.insert(name, t);
        }
    }
    Ok(PthWeights { tensors: strip_wrapper_prefixes(tensors), key })
}

/// candle's message without the backtrace it appends when RUST_BACKTRACE is set: these errors are one line.
fn message(e: candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => message(*inner),
        e => e.to_string(),
    }
}

fn legacy_format(path: &Path) -> String {
    let quote = |p: &Path| p.display().to_string().replace('\\', "\\\\").replace('\'', "\\'");
    let out = path.with_extension("resaved.pt");
    format!(
        "is in PyTorch's legacy format (torch.save before PyTorch 1.6, or with _use_new_zipfile_serialization=False), \
         which sadm does not read: re-save it with PyTorch ≥ 2.6 (whose torch.load reads only weights): \
         python -c \"import torch; torch.save(torch.load('{}', map_location='cpu'), '{}')\"",
        quote(path),
        quote(&out)
    )
}

struct Archive {
    zip: ZipArchive<BufReader<File>>,
    /// The file's size, bounding what an entry may claim before anything is allocated for it.
    len: u64,
}

impl Archive {
    /// The archive's top folder (torch names it after the file), from its `<prefix>/data.pkl`.
    fn prefix(&mut self) -> Fallible<String> {
        let names: Vec<String> = self.zip.file_names().filter_map(|n| n.ok().map(|n| n.into_owned())).collect();
        let prefix = names
            .iter()
            .find_map(|n| n.split_once('/').filter(|(_, rest)| *rest == "data.pkl").map(|(p, _)| p.to_string()))
            .ok_or("is a zip archive without a data.pkl: not a file torch.save wrote")?;
        if names.iter().any(|n| *n == format!("{prefix}/constants.pkl")) {
            return Err("is a TorchScript archive (torch.jit.save), which holds code: \
                        save the weights with torch.save(model.state_dict(), path)"
                .into());
        }
        Ok(prefix)
    }

    /// Storages are written in the saving machine's byte order, which newer archives record (older ones were
    /// all little-endian).
    fn check_byte_order(&mut self, prefix: &str) -> Fallible<()> {
        let name = format!("{prefix}/byteorder");
        if self.zip.index_for_name(&name).is_none() {
            return Ok(());
        }
        let mut order = vec![];
        match String::from_utf8_lossy(self.entry(&name, &mut order)?).trim() {
            "little" => Ok(()),
            order => Err(format!(
                "was written on a {order}-endian machine (its byteorder record says '{order}'), and sadm reads \
                 little-endian checkpoints: load it and save it again with torch.save on an x86 or ARM machine"
            )),
        }
    }

    /// The bytes of one entry, read into `buf` and checked against their CRC-32. `buf` only grows, so that reading
    /// entry after entry neither zeroes nor maps fresh memory for each.
    fn entry<'b>(&mut self, name: &str, buf: &'b mut Vec<u8>) -> Fallible<&'b [u8]> {
        let rewritten = |how: String| {
            format!(
                "its entry '{name}' is {how}, and torch.save stores entries as they are: the archive was rewritten \
                 after torch.save; save it again with torch.save"
            )
        };
        let mut f = self.zip.by_name(name).map_err(|e| match e {
            ZipError::FileNotFound => format!("has no entry '{name}': the archive is incomplete"),
            ZipError::UnsupportedArchive(_) => rewritten(format!("encrypted ({e})")),
            e => format!("its entry '{name}' cannot be read ({e}): download or copy it again"),
        })?;
        if f.compression() != CompressionMethod::Stored {
            return Err(rewritten(format!("compressed ({})", f.compression())));
        }
        if f.size() > self.len {
            return Err(format!("its entry '{name}' claims {} bytes, more than the file has: the archive is damaged", f.size()));
        }
        let size = f.size() as usize;
        if buf.len() < size {
            buf.resize(size, 0);
        }
        let bytes = &mut buf[..size];
        // The CRC-32 is checked when the reader meets the entry's end, which the last read reaches.
        f.read_exact(bytes).and_then(|_| f.read(&mut [0]).map(drop)).map_err(|e| {
            let why = match e.kind() {
                std::io::ErrorKind::InvalidData => "its CRC-32 does not match",
                std::io::ErrorKind::UnexpectedEof => "it is shorter than its record says",
                _ => "it cannot be read",
            };
            format!("its entry '{name}' is corrupt ({why}: {e}): download or copy it again")
        })?;
        Ok(bytes)
    }
}

/// A global as Python 3 names it: protocol 2 writes Python 2's `__builtin__`, and `os.system` lives in `posix`.
fn display_name(module: &str, name: &str) -> String {
    let module = match module {
        "__builtin__" => "builtins",
        "posix" | "nt" => "os",
        m => m,
    };
    format!("{module}.{name}")
}

/// Refuses every global the pickle names that is not a torch tensor, storage or dtype, an `OrderedDict`, or the
/// `argparse.Namespace` of DiT's `train.py` checkpoints: nothing is ever called, but a pickle that would call
/// something else is not a checkpoint of weights.
fn check_callables(obj: &Object, depth: usize) -> Fallible<()> {
    if depth > MAX_DEPTH {
        return Err(format!("its pickle nests objects deeper than {MAX_DEPTH} levels: it is not a state dict"));
    }
    let check = |o: &Object| check_callables(o, depth + 1);
    match obj {
        Object::Class { module_name, class_name } if !allowed(module_name, class_name) => {
            let name = display_name(module_name, class_name);
            if module_name == "torch._utils" && class_name.starts_with("_rebuild_") {
                return Err(format!(
                    "holds a tensor rebuilt by {name} (sparse, quantized, nested or on a device without storage), \
                     which sadm does not read: save dense tensors with torch.save(model.state_dict(), path)"
                ));
            }
            Err(format!(
                "refused: its pickle calls {name}, and sadm never runs code from a checkpoint (it allows only \
                 torch's tensor rebuilding, OrderedDict and argparse.Namespace; a model saved whole with \
                 torch.save(model) names its class): save only the weights with torch.save(model.state_dict(), path)"
            ))
        }
        Object::Tuple(v) | Object::List(v) => v.iter().try_for_each(check),
        Object::Dict(kv) => kv.iter().try_for_each(|(k, v)| check(k).and_then(|_| check(v))),
        Object::Reduce { callable, args } | Object::Build { callable, args } => check(callable).and_then(|_| check(args)),
        Object::PersistentLoad(id) => check(id),
        _ => Ok(()),
    }
}

/// The functions torch pickles a tensor with (`Tensor.__reduce_ex__`, `Parameter.__reduce_ex__`).
const TENSOR_REBUILDERS: [(&str, &str); 5] = [
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._tensor", "_rebuild_from_type_v2"),
];

fn allowed(module: &str, name: &str) -> bool {
    if TENSOR_REBUILDERS.contains(&(module, name)) {
        return true;
    }
    match module {
        "torch._tensor" => name == "Tensor",
        "torch" => name.ends_with("Storage") || name == "Tensor" || element(name).is_some(),
        "torch.storage" => name == "UntypedStorage",
        "torch.nn.parameter" => name == "Parameter",
        "collections" => name == "OrderedDict",
        "argparse" => name == "Namespace",
        _ => false,
    }
}

/// How the elements of a torch storage class (`_rebuild_tensor_v2`) or dtype (`_rebuild_tensor_v3`) load.
#[derive(Clone, Copy, Debug)]
enum Element {
    Native(DType),
    /// candle has no int8: widened to I16.
    Int8,
    /// A dtype torch has and candle does not (complex, quantized, other float8s, uint16/64, sub-byte).
    Unsupported,
}

impl Element {
    fn size(self) -> usize {
        match self {
            Element::Native(dt) => dt.size_in_bytes(),
            Element::Int8 | Element::Unsupported => 1,
        }
    }
}

fn element(name: &str) -> Option<Element> {
    use Element::*;
    Some(match name {
        "FloatStorage" | "float32" => Native(DType::F32),
        "DoubleStorage" | "float64" => Native(DType::F64),
        "HalfStorage" | "float16" => Native(DType::F16),
        "BFloat16Storage" | "bfloat16" => Native(DType::BF16),
        "LongStorage" | "int64" => Native(DType::I64),
        "IntStorage" | "int32" => Native(DType::I32),
        "ShortStorage" | "int16" => Native(DType::I16),
        "ByteStorage" | "uint8" => Native(DType::U8),
        // torch stores a bool as one byte, 0 or 1.
        "BoolStorage" | "bool" => Native(DType::U8),
        "uint32" => Native(DType::U32),
        "float8_e4m3fn" => Native(DType::F8E4M3),
        "CharStorage" | "int8" => Int8,
        "ComplexFloatStorage" | "ComplexDoubleStorage" | "complex32" | "complex64" | "complex128" | "uint16" | "uint64"
        | "float8_e5m2" | "float8_e4m3fnuz" | "float8_e5m2fnuz" | "float8_e8m0fnu" | "float4_e2m1fn_x2" | "QInt8Storage"
        | "QUInt8Storage" | "QInt32Storage" | "QUInt4x2Storage" | "QUInt2x4Storage" => Unsupported,
        _ => return None,
    })
}

fn kind(obj: &Object) -> String {
    match obj {
        Object::Int(_) | Object::Long(_) => "an int".into(),
        Object::Float(_) => "a float".into(),
        Object::Unicode(_) => "a string".into(),
        Object::Bool(_) => "a bool".into(),
        Object::None => "None".into(),
        Object::Tuple(_) => "a tuple".into(),
        Object::List(_) => "a list".into(),
        Object::Dict(_) => "a dict".into(),
        _ if rebuilds_tensor(obj) => "a tensor".into(),
        Object::Reduce { callable, .. } | Object::Build { callable, .. } => match callable.as_ref() {
            Object::Class { module_name, class_name } => format!("an object of type {}", display_name(module_name, class_name)),
            inner => kind(inner),
        },
        _ => "an object".into(),
    }
}

fn class_name(obj: &Object) -> Option<(&str, &str)> {
    match obj {
        Object::Class { module_name, class_name } => Some((module_name, class_name)),
        _ => None,
    }
}

fn rebuilds_tensor(obj: &Object) -> bool {
    matches!(obj, Object::Reduce { callable, .. } if class_name(callable).is_some_and(|c| TENSOR_REBUILDERS.contains(&c)))
}

fn unicode(obj: &Object) -> Option<&str> {
    match obj {
        Object::Unicode(s) => Some(s),
        _ => None,
    }
}

fn keys_of(entries: &[(Object, Object)]) -> String {
    let mut keys: Vec<&str> = entries.iter().filter_map(|(k, _)| unicode(k)).collect();
    keys.sort();
    keys.join(", ")
}

/// The state dict in the file's object, and the top-level key it was under.
fn select(root: Object, key: Option<&str>) -> Fallible<(Entries, Option<String>)> {
    let Object::Dict(mut entries) = root else {
        return Err(format!(
            "holds {}, not a state dict (a dict of named tensors): save one with torch.save(model.state_dict(), path)",
            kind(&root)
        ));
    };
    let position = |entries: &[(Object, Object)], k: &str| entries.iter().position(|(name, _)| unicode(name) == Some(k));
    if let Some(k) = key {
        let keys = keys_of(&entries);
        let i = position(&entries, k).ok_or_else(|| format!("has no entry '{k}' (its keys: {keys})"))?;
        return match entries.swap_remove(i).1 {
            Object::Dict(d) => Ok((d, Some(k.to_string()))),
            other => Err(format!("its entry '{k}' is {}, not a state dict (its keys: {keys})", kind(&other))),
        };
    }
    if entries.iter().any(|(_, v)| rebuilds_tensor(v)) {
        return Ok((entries, None));
    }
    for k in PREFERRED_KEYS {
        let holds_tensors = |i: usize| matches!(&entries[i].1, Object::Dict(d) if d.iter().any(|(_, v)| rebuilds_tensor(v)));
        if let Some(i) = position(&entries, k).filter(|&i| holds_tensors(i)) {
            let Object::Dict(d) = entries.swap_remove(i).1 else { unreachable!("checked to be a dict") };
            return Ok((d, Some(k.to_string())));
        }
    }
    Err(format!(
        "holds no state dict: none of its entries is a tensor, and it has no {} entry of tensors (its keys: {}); \
         pass the key of the weights to read",
        PREFERRED_KEYS.map(|k| format!("'{k}'")).join(", "),
        keys_of(&entries)
    ))
}

fn tensor_refs(entries: Entries, key: Option<&str>) -> Fallible<Vec<(String, TensorRef)>> {
    let at = key.map(|k| format!(" under '{k}'")).unwrap_or_default();
    let mut refs = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        let Some(name) = unicode(&name).map(str::to_string) else {
            return Err(format!("its state dict{at} has a key that is {}, not a string: it is not a state dict", kind(&name)));
        };
        // nn.Module.state_dict()'s `_metadata` attribute (layer versions), which candle merges into the dict.
        if name == "_metadata" && matches!(value, Object::Dict(_)) {
            continue;
        }
        match tensor_ref(&value).map_err(|e| format!("tensor '{name}'{at}: {e}"))? {
            Some(r) => refs.push((name, r)),
            None => return Err(format!("its state dict{at} has '{name}', which is {}, not a tensor", kind(&value))),
        }
    }
    if refs.is_empty() {
        return Err(format!("its state dict{at} holds no tensors"));
    }
    Ok(refs)
}

/// A tensor as torch saves it: a view (offset, shape, strides in elements) of a storage entry.
#[derive(Debug)]
struct TensorRef {
    storage: String,
    element: Element,
    /// The storage class or dtype, for messages.
    element_name: String,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

fn tensor_ref(obj: &Object) -> Fallible<Option<TensorRef>> {
    match obj {
        Object::Reduce { callable, args } => rebuild(callable, args),
        _ => Ok(None),
    }
}

fn items(obj: &Object) -> Fallible<&[Object]> {
    match obj {
        Object::Tuple(v) => Ok(v),
        other => Err(format!("malformed record: expected a tuple, found {}", kind(other))),
    }
}

/// A size, offset or stride: at most `i64::MAX` (pickle ints are signed), so that the view arithmetic cannot
/// overflow once the view's extent is checked.
fn index(obj: &Object) -> Fallible<usize> {
    match obj {
        Object::Int(i) if *i >= 0 => Ok(*i as usize),
        Object::Long(i) if *i >= 0 => usize::try_from(*i).map_err(|_| format!("malformed record: {i} is too large")),
        other => Err(format!("malformed record: expected a size, found {other:?}")),
    }
}

fn indices(obj: &Object) -> Fallible<Vec<usize>> {
    items(obj)?.iter().map(index).collect()
}

/// Follows torch's rebuilding functions (`torch/_utils.py`) down to the storage view they restore.
fn rebuild(callable: &Object, args: &Object) -> Fallible<Option<TensorRef>> {
    let Some(name) = class_name(callable) else { return Ok(None) };
    let args = || items(args);
    match name {
        // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, dtype for v3][, metadata])
        ("torch._utils", v @ ("_rebuild_tensor_v2" | "_rebuild_tensor_v3")) => {
            let a = args()?;
            let n = if v == "_rebuild_tensor_v3" { 7 } else { 4 };
            if a.len() < n {
                return Err(format!("malformed record: {v} with {} arguments", a.len()));
            }
            let Object::PersistentLoad(id) = &a[0] else {
                return Err(format!("malformed record: its storage is {}", kind(&a[0])));
            };
            // ("storage", storage class, key, location, numel)
            let id = items(id)?;
            let (Some(class), Some(key)) = (id.get(1).and_then(class_name), id.get(2).and_then(unicode)) else {
                return Err("malformed record: a storage id without a class and key".into());
            };
            let element_name = match v {
                "_rebuild_tensor_v3" => class_name(&a[6]).map(|(_, n)| n).ok_or("malformed record: a v3 tensor without a dtype")?,
                _ => class.1,
            };
            let element = element(element_name).ok_or_else(|| format!("unknown storage type torch.{element_name}"))?;
            Ok(Some(TensorRef {
                storage: key.to_string(),
                element,
                element_name: element_name.to_string(),
                offset: index(&a[1])?,
                shape: indices(&a[2])?,
                stride: indices(&a[3])?,
            }))
        }
        // (data, requires_grad, backward_hooks[, state])
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            let data = args()?.first().ok_or("malformed record: a parameter without data")?;
            tensor_ref(data)?.map(Some).ok_or_else(|| format!("malformed record: a parameter whose data is {}", kind(data)))
        }
        // (function, type, args, state): a tensor saved with attributes or as a subclass.
        ("torch._tensor", "_rebuild_from_type_v2") => match args()? {
            [func, ty, inner, ..] => match class_name(ty) {
                Some(("torch" | "torch._tensor", "Tensor") | ("torch.nn.parameter", "Parameter")) => rebuild(func, inner),
                _ => Err("malformed record: _rebuild_from_type_v2 of a type that is not a tensor".into()),
            },
            a => Err(format!("malformed record: _rebuild_from_type_v2 with {} arguments", a.len())),
        },
        _ => Ok(None),
    }
}

impl TensorRef {
    fn tensor(&self, storage: &[u8], device: &Device) -> Fallible<Tensor> {
        let es = self.element.size();
        if matches!(self.element, Element::Unsupported) {
            let dtype = &self.element_name;
            return Err(format!("its dtype is torch.{dtype}, which sadm does not load (it loads float, int and bool tensors)"));
        }
        if self.shape.len() != self.stride.len() {
            return Err(format!("malformed record: shape {:?} with strides {:?}", self.shape, self.stride));
        }
        let numel = self.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or("malformed record: too many elements")?;
        let dtype = match self.element {
            Element::Native(dt) => dt,
            _ => DType::I16,
        };
        if numel == 0 {
            return Tensor::zeros(self.shape.as_slice(), dtype, device).map_err(message);
        }
        // The furthest element the view reaches must lie in the storage.
        let reach = |end: usize, (&d, &s): (&usize, &usize)| end.checked_add((d - 1).checked_mul(s)?);
        let last = self.shape.iter().zip(&self.stride).try_fold(self.offset, reach);
        let end = last.and_then(|l| l.checked_add(1)?.checked_mul(es));
        if end.is_none_or(|end| end > storage.len()) {
            return Err(format!(
                "its view (offset {}, shape {:?}, strides {:?}) reaches past the end of its storage ({} bytes): the file is damaged",
                self.offset, self.shape, self.stride, storage.len()
            ));
        }
        let bytes = if self.is_contiguous() {
            Cow::Borrowed(&storage[self.offset * es..(self.offset + numel) * es])
        } else {
            Cow::Owned(self.gather(storage, numel, es))
        };
        match self.element {
            Element::Int8 => {
                let widened: Vec<i16> = bytes.iter().map(|&b| b as i8 as i16).collect();
                Tensor::from_vec(widened, self.shape.as_slice(), device)
            }
            _ => Tensor::from_raw_buffer(&bytes, dtype, &self.shape, device),
        }
        .map_err(message)
    }

    /// Row-major with no gaps (the strides of size-1 dimensions do not matter).
    fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&d, &s) in self.shape.iter().zip(&self.stride).rev() {
            if d != 1 && s != expected {
                return false;
            }
            expected *= d;
        }
        true
    }

    /// The view's elements in row-major order, for transposed, sliced and expanded tensors.
    fn gather(&self, storage: &[u8], numel: usize, es: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(numel * es);
        let mut index = vec![0; self.shape.len()];
        let mut at = self.offset;
        for _ in 0..numel {
            out.extend_from_slice(&storage[at * es..(at + 1) * es]);
            for d in (0..index.len()).rev() {
                index[d] += 1;
                at += self.stride[d];
                if index[d] < self.shape[d] {
                    break;
                }
                at -= self.stride[d] * self.shape[d];
                index[d] = 0;
            }
        }
        out
    }
}

fn strip_wrapper_prefixes(mut tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    while let Some(prefix) = WRAPPER_PREFIXES.iter().find(|p| !tensors.is_empty() && tensors.keys().all(|k| k.starts_with(*p))) {
        tensors = tensors.into_iter().map(|(k, v)| (k[prefix.len()..].to_string(), v)).collect();
    }
    tensors
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn testdata(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(name)
    }

    fn load(name: &str) -> PthWeights {
        load_pth(&testdata(name), None, &Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// The error for `path`, checked to be one line naming the file.
    fn error_at(path: &Path, key: Option<&str>) -> String {
        let e = load_pth(path, key, &Device::Cpu).err().unwrap_or_else(|| panic!("{} loaded", path.display())).to_string();
        assert!(e.starts_with(&format!("checkpoint {}: ", path.display())) && !e.contains('\n'), "{e}");
        e
    }

    fn error(name: &str, key: Option<&str>) -> String {
        error_at(&testdata(name), key)
    }

    fn f64s(t: &Tensor) -> Vec<f64> {
        // Through F32: candle 0.11.1's F8E4M3 → F64 conversion never returns.
        let t = if t.dtype() == DType::F8E4M3 { t.to_dtype(DType::F32).unwrap() } else { t.clone() };
        t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap()
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sadm-pth-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn every_stored_dtype_loads_with_its_values() {
        let w = load("pth_dtypes.pt");
        assert_eq!(w.key, None);
        let mut names: Vec<&str> = w.tensors.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["bf16", "bool", "empty", "f16", "f32", "f64", "f8e4m3fn", "i16", "i32", "i64", "i8", "scalar", "u32", "u8"]);
        let t = |n: &str| &w.tensors[n];
        // The values torch.save wrote, rounded to each format by torch (printed by pth_reference.py).
        let vals = [0.1, -2.5, 65504.0, 1.0 / 3.0, 0.0, -0.0];
        assert_eq!((t("f32").dtype(), t("f32").dims()), (DType::F32, &[2, 3][..]));
        assert_eq!(f64s(t("f32")), vals.map(|v| v as f32 as f64));
        assert_eq!((t("f64").dtype(), t("f64").dims()), (DType::F64, &[3, 2][..]));
        assert_eq!(f64s(t("f64")), vals);
        assert_eq!(t("f16").dtype(), DType::F16);
        assert_eq!(f64s(t("f16")), [0.0999755859375, -2.5, 65504.0, 0.333251953125, 0.0, -0.0]);
        assert_eq!(t("bf16").dtype(), DType::BF16);
        assert_eq!(f64s(t("bf16")), [0.10009765625, -2.5, 65536.0, 0.333984375, 0.0, -0.0]);
        assert!(f64s(t("f16"))[5].is_sign_negative() && f64s(t("bf16"))[5].is_sign_negative());
        assert_eq!(t("f8e4m3fn").dtype(), DType::F8E4M3);
        assert_eq!(f64s(t("f8e4m3fn")), [0.5, -448.0, 0.34375]);
        assert_eq!(t("i64").dtype(), DType::I64);
        assert_eq!(t("i64").to_vec1::<i64>().unwrap(), [(1 << 40) + 1, -3, 0, i64::MAX]);
        assert_eq!(t("i32").to_vec1::<i32>().unwrap(), [-7, i32::MAX, i32::MIN]);
        assert_eq!(t("i16").to_vec1::<i16>().unwrap(), [i16::MIN, 5, i16::MAX]);
        assert_eq!((t("i8").dtype(), t("i8").to_vec1::<i16>().unwrap()), (DType::I16, vec![-128, 0, 127]));
        assert_eq!(t("u8").to_vec1::<u8>().unwrap(), [0, 7, 255]);
        assert_eq!(t("u32").to_vec1::<u32>().unwrap(), [0, u32::MAX]);
        assert_eq!((t("bool").dtype(), t("bool").to_vec1::<u8>().unwrap()), (DType::U8, vec![1, 0, 1]));
        assert_eq!((t("scalar").dims(), t("scalar").to_scalar::<f32>().unwrap()), (&[][..], 2.5));
        assert_eq!(t("empty").dims(), [0, 4]);
        // A dtype candle has no type for is named, not dropped.
        let e = error("pth_complex.pt", None);
        assert!(e.contains("tensor 'z'") && e.contains("torch.ComplexFloatStorage, which sadm does not load"), "{e}");
    }

    #[test]
    fn views_of_one_storage_load_as_torch_shows_them() {
        let w = load("pth_views.pt");
        let base: Vec<f64> = (0..24).map(f64::from).collect();
        let v = |n: &str| (w.tensors[n].dims().to_vec(), f64s(&w.tensors[n]));
        assert_eq!(v("base"), (vec![4, 6], base.clone()));
        let transposed: Vec<f64> = (0..6).flat_map(|j| (0..4).map(move |i| (i * 6 + j) as f64)).collect();
        assert_eq!(v("t"), (vec![6, 4], transposed));
        assert_eq!(v("row"), (vec![6], base[6..12].to_vec()));
        assert_eq!(v("col"), (vec![4], vec![2., 8., 14., 20.]));
        assert_eq!(v("slice"), (vec![2, 3], vec![6., 8., 10., 12., 14., 16.]));
        assert_eq!(v("expanded"), (vec![2, 3], vec![0., 1., 2., 0., 1., 2.]));
        assert_eq!(v("param"), (vec![2], vec![1.5, -2.0]));
        assert_eq!(v("attr"), (vec![2], vec![4.0, 5.0]));
        // Loaded tensors are plain contiguous candle tensors, whatever view torch saved.
        assert!(w.tensors.values().all(|t| t.is_contiguous()));
        // Hand-made records (pth_reference.py): a size-1 dimension of stride 2⁶² reads as torch reads it, a view past
        // its storage's end is refused.
        let w = load("pth_huge_stride.pt");
        assert_eq!((w.tensors["w"].dims(), f64s(&w.tensors["w"])), (&[1, 3][..], vec![1., 2., 3.]));
        let e = error("pth_out_of_bounds.pt", None);
        assert!(e.ends_with("tensor 'w' (storage data/0): its view (offset 2, shape [2, 2], strides [2, 1]) reaches past the end of its storage (16 bytes): the file is damaged"), "{e}");
    }

    #[test]
    fn nested_checkpoints_read_ema_first_or_the_key_asked_for() {
        let linear = |w: &PthWeights, offset: f64| {
            let mut names: Vec<&String> = w.tensors.keys().collect();
            names.sort();
            assert_eq!(names, ["bias", "weight"]);
            assert_eq!(f64s(&w.tensors["weight"]), (0..6).map(|i| offset + i as f64).collect::<Vec<_>>());
            assert_eq!(f64s(&w.tensors["bias"]), [offset + 10.0, offset + 11.0]);
        };
        // DiT train.py's {"model", "ema", "opt", "args"}: the EMA, as DiT's sample.py reads it.
        let w = load("pth_train_style.pt");
        assert_eq!(w.key.as_deref(), Some("ema"));
        linear(&w, 100.0);
        let path = testdata("pth_train_style.pt");
        let w = load_pth(&path, Some("model"), &Device::Cpu).unwrap();
        assert_eq!(w.key.as_deref(), Some("model"));
        linear(&w, 0.0);
        let e = error("pth_train_style.pt", Some("opt"));
        assert!(e.contains("its state dict under 'opt' has '"), "{e}");
        let e = error("pth_train_style.pt", Some("args"));
        assert!(e.ends_with("its entry 'args' is an object of type argparse.Namespace, not a state dict (its keys: args, ema, model, opt)"), "{e}");
        let e = error("pth_train_style.pt", Some("emma"));
        assert!(e.ends_with("has no entry 'emma' (its keys: args, ema, model, opt)"), "{e}");
        let w = load("pth_model_key.pt");
        assert_eq!(w.key.as_deref(), Some("model"));
        linear(&w, 0.0);
        // DistributedDataParallel's "module." prefix is stripped.
        let w = load("pth_state_dict_ddp.pt");
        assert_eq!(w.key.as_deref(), Some("state_dict"));
        linear(&w, 0.0);
    }

    #[test]
    fn code_in_a_pickle_is_refused_by_name_and_never_run() {
        for (file, callable) in [("pth_os_system.pt", "os.system"), ("pth_eval.pt", "builtins.eval"), ("pth_module.pt", "__main__.TinyNet")] {
            let e = error(file, None);
            assert!(e.contains(&format!("refused: its pickle calls {callable}, and sadm never runs code")), "{e}");
            assert!(e.ends_with("save only the weights with torch.save(model.state_dict(), path)"), "{e}");
            // Even when the weights asked for are elsewhere in the file.
            assert!(error(file, Some("w")).contains("refused"));
        }
        let e = error("pth_torchscript.pt", None);
        assert!(e.contains("is a TorchScript archive (torch.jit.save)"), "{e}");
    }

    #[test]
    fn the_legacy_format_is_explained_with_the_command_that_resaves_it() {
        let path = testdata("pth_legacy.pt");
        let e = error("pth_legacy.pt", None);
        assert!(e.contains("is in PyTorch's legacy format"), "{e}");
        let resaved = path.with_extension("resaved.pt");
        let cmd = format!(
            "python -c \"import torch; torch.save(torch.load('{}', map_location='cpu'), '{}')\"",
            path.display(),
            resaved.display()
        );
        assert!(e.ends_with(&cmd), "{e}");
    }

    #[test]
    fn files_that_are_not_state_dicts_are_told_apart() {
        let cases = [
            ("pth_tensor.pt", "holds a tensor, not a state dict (a dict of named tensors)"),
            ("pth_list.pt", "holds a list, not a state dict"),
            ("pth_no_tensors.pt", "holds no state dict: none of its entries is a tensor, and it has no 'ema', 'model', 'state_dict' entry of tensors (its keys: epoch, name)"),
            ("pth_protocol4.pt", "its data.pkl is not a pickle sadm reads (unknown op-code 149)"),
            ("pth_big_endian.pt", "was written on a big-endian machine"),
            ("pth_deflated.pt", "its entry 'archive/byteorder' is compressed (Deflated), and torch.save stores entries as they are"),
            ("pth_no_data_pkl.pt", "is a zip archive without a data.pkl"),
        ];
        for (file, want) in cases {
            let e = error(file, None);
            assert!(e.contains(want), "{file}: {e}");
        }
    }

    #[test]
    fn broken_files_are_one_line_errors_naming_the_file() {
        let dir = tmpdir("broken");
        let good = std::fs::read(testdata("pth_dit_small.pt")).unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let p = dir.join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let e = error_at(&write("truncated.pt", &good[..good.len() / 2]), None);
        assert!(e.contains("is truncated or damaged"), "{e}");
        let e = error_at(&write("short.pt", &good[..3]), None);
        assert!(e.contains("starts with neither a zip header nor a pickle"), "{e}");
        let e = error_at(&write("empty.pt", b""), None);
        assert!(e.contains("is not a PyTorch checkpoint: torch.save writes a zip archive, and this file is empty"), "{e}");
        let e = error_at(&write("garbage.pt", b"<html>Not Found</html>"), None);
        assert!(e.contains("starts with neither a zip header nor a pickle"), "{e}");
        let e = error_at(&write("pickle.pkl", b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x03."), None);
        assert!(e.contains("is a pickle but not a torch.save file"), "{e}");
        // A flipped bit in the middle of a stored weight: the entry's CRC-32 tells.
        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 0x10;
        let e = error_at(&write("flipped.pt", &flipped), None);
        assert!(e.contains("is corrupt (its CRC-32 does not match"), "{e}");
        let e = error_at(&dir.join("missing.pt"), None);
        assert!(e.contains("cannot be opened"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn torch_files_are_told_from_safetensors_by_their_bytes() {
        let dir = tmpdir("sniff");
        let st = dir.join("weights.pt");
        candle_core::safetensors::save(&HashMap::from([("w".to_string(), Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap())]), &st)
            .unwrap();
        assert!(!is_torch_file(&st).unwrap(), "a safetensors file named .pt");
        assert!(error_at(&st, None).ends_with("is a safetensors file, not a torch.save one: read it as safetensors"));
        let zip = dir.join("weights.safetensors");
        std::fs::copy(testdata("pth_views.pt"), &zip).unwrap();
        assert!(is_torch_file(&zip).unwrap(), "a torch.save file named .safetensors");
        assert!(is_torch_file(&testdata("pth_legacy.pt")).unwrap());
        std::fs::write(dir.join("junk.pth"), b"junk").unwrap();
        assert!(is_torch_file(&dir.join("junk.pth")).unwrap(), "a broken .pth gets the torch reader's error");
        std::fs::write(dir.join("junk.safetensors"), b"junk").unwrap();
        assert!(!is_torch_file(&dir.join("junk.safetensors")).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
