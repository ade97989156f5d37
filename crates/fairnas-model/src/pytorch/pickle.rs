//! A pickle interpreter that builds data and never runs code.
//!
//! PyTorch checkpoints are pickles, and a pickle is a program: `GLOBAL os system` followed by
//! `REDUCE` calls `os.system`. Python's unpickler happily runs it; this one cannot, because it
//! has no way to call anything. It knows the opcodes `torch.save` emits (protocols 2-5), builds
//! plain values (None, bools, ints, floats, strings, bytes, tuples, lists, dicts) and resolves a
//! fixed whitelist of globals to inert markers ([`Global`]); the few "calls" a state dict needs
//! (making an `OrderedDict`, rebuilding a tensor from its storage) are interpreted here as data
//! constructors. Any other global is an error that names it.
//!
//! Values live in an arena and refer to each other by [`ValueId`], which gives Python's sharing
//! semantics for memoised objects (a dict memoised before its items are set is the same dict
//! later) and makes hostile inputs cheap: `GET` is O(1), self-referencing structures cannot
//! blow up memory, and dropping a deeply nested structure does not recurse.

use std::collections::HashMap;

use super::{CheckpointError, TorchDtype};

/// More dimensions than any real tensor has; the bound keeps a hostile pickle from making every
/// tensor carry a huge shape vector.
pub const MAX_TENSOR_RANK: usize = 32;

/// Index of a value in the [`Arena`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ValueId(pub usize);

/// A resolved global: the only names a checkpoint may refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Global {
    /// `collections.OrderedDict`: called with no arguments, makes an empty dict.
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2` (and the older `_rebuild_tensor`).
    RebuildTensor,
    /// `torch._utils._rebuild_parameter`: unwraps to its tensor.
    RebuildParameter,
    /// A `torch.<Type>Storage` class, as named in persistent ids.
    StorageType(TorchDtype),
    /// A `torch.<dtype>` object (the zip form may pickle dtypes).
    Dtype(TorchDtype),
}

impl Global {
    /// Resolves `module.name`, or says why not. Nothing outside this list is ever reachable.
    pub fn resolve(module: &str, name: &str) -> Result<Global, CheckpointError> {
        let global = match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => Global::RebuildTensor,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch", storage) if storage.ends_with("Storage") => {
                Global::StorageType(TorchDtype::from_storage_type(storage).ok_or_else(|| {
                    CheckpointError::ForbiddenGlobal(format!("{module}.{name} (unsupported storage type)"))
                })?)
            }
            ("torch", dtype) => Global::Dtype(
                TorchDtype::from_dtype_name(dtype)
                    .ok_or_else(|| CheckpointError::ForbiddenGlobal(format!("{module}.{name}")))?,
            ),
            _ => return Err(CheckpointError::ForbiddenGlobal(format!("{module}.{name}"))),
        };
        Ok(global)
    }
}

/// A tensor as the pickle describes it: a view into a storage.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    /// In elements of the storage's dtype.
    pub offset: usize,
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
}

/// A storage named by a persistent id: `('storage', type, key, location, numel[, view])`.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    pub dtype: TorchDtype,
    pub key: String,
    /// Elements the checkpoint declares the storage to hold.
    pub numel: usize,
    /// Legacy storage views: (element offset into the root storage, view length).
    pub view: Option<(usize, usize)>,
}

/// A pickled value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too large for i64, as little-endian two's-complement bytes.
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<ValueId>),
    List(Vec<ValueId>),
    /// Insertion-ordered (both `dict` and `OrderedDict`).
    Dict(Vec<(ValueId, ValueId)>),
    Global(Global),
    Storage(StorageRef),
    Tensor(TensorRef),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }
}

/// All values of one or more pickles.
#[derive(Debug, Default)]
pub struct Arena {
    values: Vec<Value>,
}

impl Arena {
    pub fn get(&self, id: ValueId) -> &Value {
        &self.values[id.0]
    }

    fn push(&mut self, value: Value) -> ValueId {
        self.values.push(value);
        ValueId(self.values.len() - 1)
    }

    /// The string value of `id`, if it is one.
    pub fn str(&self, id: ValueId) -> Option<&str> {
        match self.get(id) {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The entries of a dict, or None.
    pub fn dict(&self, id: ValueId) -> Option<&[(ValueId, ValueId)]> {
        match self.get(id) {
            Value::Dict(entries) => Some(entries),
            _ => None,
        }
    }

    fn int(&self, id: ValueId, what: &str) -> Result<i64, CheckpointError> {
        match self.get(id) {
            Value::Int(i) => Ok(*i),
            Value::Bool(b) => Ok(*b as i64),
            other => Err(malformed(format!("{what}: expected an int, found {}", other.kind()))),
        }
    }

    fn usize(&self, id: ValueId, what: &str) -> Result<usize, CheckpointError> {
        let i = self.int(id, what)?;
        usize::try_from(i).map_err(|_| malformed(format!("{what}: {i} is negative")))
    }

    fn items(&self, id: ValueId, what: &str) -> Result<&[ValueId], CheckpointError> {
        match self.get(id) {
            Value::Tuple(items) | Value::List(items) => Ok(items),
            other => Err(malformed(format!("{what}: expected a tuple, found {}", other.kind()))),
        }
    }

    fn usizes(&self, id: ValueId, what: &str) -> Result<Vec<usize>, CheckpointError> {
        self.items(id, what)?.iter().map(|&v| self.usize(v, what)).collect()
    }

    /// A short description for error messages (bounded: never walks into containers).
    pub fn describe(&self, id: ValueId) -> String {
        match self.get(id) {
            Value::Str(s) => format!("{s:?}"),
            Value::Int(i) => i.to_string(),
            other => other.kind().to_string(),
        }
    }
}

fn malformed(message: String) -> CheckpointError {
    CheckpointError::Malformed(message)
}

/// Turns a persistent id into a storage; supplied by the container (legacy and zip ids differ
/// slightly).
pub type PersistentLoad<'a> = dyn FnMut(&Arena, ValueId) -> Result<StorageRef, CheckpointError> + 'a;

/// The interpreter state for one pickle.
struct Machine<'d, 'a> {
    data: &'d [u8],
    pos: usize,
    arena: &'a mut Arena,
    stack: Vec<ValueId>,
    marks: Vec<usize>,
    memo: HashMap<u64, ValueId>,
}

/// Runs the pickle starting at `data[start..]`, returning its value and the offset just past
/// its STOP opcode (checkpoints concatenate several pickles).
pub fn unpickle(
    data: &[u8],
    start: usize,
    arena: &mut Arena,
    persistent_load: &mut PersistentLoad,
) -> Result<(ValueId, usize), CheckpointError> {
    let mut m =
        Machine { data, pos: start, arena, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new() };
    loop {
        let at = m.pos;
        let op = m.byte()?;
        let stopped = m.step(op, persistent_load).map_err(|e| match e {
            CheckpointError::Malformed(msg) => {
                CheckpointError::Malformed(format!("pickle opcode 0x{op:02x} at byte {at}: {msg}"))
            }
            other => other,
        })?;
        if stopped {
            let value = m.pop()?;
            return Ok((value, m.pos));
        }
    }
}

impl Machine<'_, '_> {
    fn byte(&mut self) -> Result<u8, CheckpointError> {
        let b = *self.data.get(self.pos).ok_or(CheckpointError::Truncated("pickle stream"))?;
        self.pos += 1;
        Ok(b)
    }

    /// Takes `n` bytes, checking `n` against what is left before anything is allocated.
    fn take(&mut self, n: u64) -> Result<&[u8], CheckpointError> {
        let left = (self.data.len() - self.pos) as u64;
        if n > left {
            return Err(CheckpointError::Truncated("pickle stream"));
        }
        let n = n as usize;
        let slice = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }

    fn le_u64(&mut self, n: usize) -> Result<u64, CheckpointError> {
        let bytes = self.take(n as u64)?;
        Ok(bytes.iter().rev().fold(0u64, |acc, &b| (acc << 8) | b as u64))
    }

    fn line(&mut self) -> Result<&str, CheckpointError> {
        let rest = &self.data[self.pos..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or(CheckpointError::Truncated("pickle stream"))?;
        self.pos += end + 1;
        std::str::from_utf8(&rest[..end]).map_err(|_| malformed("text argument is not UTF-8".into()))
    }

    fn push(&mut self, value: Value) {
        let id = self.arena.push(value);
        self.stack.push(id);
    }

    fn pop(&mut self) -> Result<ValueId, CheckpointError> {
        self.stack.pop().ok_or_else(|| malformed("stack underflow".into()))
    }

    fn top(&self) -> Result<ValueId, CheckpointError> {
        self.stack.last().copied().ok_or_else(|| malformed("stack underflow".into()))
    }

    /// Pops everything above the most recent MARK.
    fn pop_mark(&mut self) -> Result<Vec<ValueId>, CheckpointError> {
        let mark = self.marks.pop().ok_or_else(|| malformed("no MARK on the stack".into()))?;
        if mark > self.stack.len() {
            return Err(malformed("MARK above the stack top".into()));
        }
        Ok(self.stack.split_off(mark))
    }

    fn memo_get(&self, index: u64) -> Result<ValueId, CheckpointError> {
        self.memo
            .get(&index)
            .copied()
            .ok_or_else(|| malformed(format!("memo entry {index} was never stored")))
    }

    fn memo_put(&mut self, index: u64) -> Result<(), CheckpointError> {
        let top = self.top()?;
        self.memo.insert(index, top);
        Ok(())
    }

    fn text(&mut self, n: u64) -> Result<(), CheckpointError> {
        let bytes = self.take(n)?;
        let s = std::str::from_utf8(bytes).map_err(|_| malformed("string is not valid UTF-8".into()))?;
        let s = s.to_string();
        self.push(Value::Str(s));
        Ok(())
    }

    fn bytes(&mut self, n: u64) -> Result<(), CheckpointError> {
        let b = self.take(n)?.to_vec();
        self.push(Value::Bytes(b));
        Ok(())
    }

    fn long(&mut self, n: u64) -> Result<(), CheckpointError> {
        let bytes = self.take(n)?;
        let value = if bytes.is_empty() {
            Value::Int(0)
        } else if bytes.len() <= 8 {
            let negative = bytes[bytes.len() - 1] & 0x80 != 0;
            let mut raw = [if negative { 0xff } else { 0 }; 8];
            raw[..bytes.len()].copy_from_slice(bytes);
            Value::Int(i64::from_le_bytes(raw))
        } else {
            Value::BigInt(bytes.to_vec())
        };
        self.push(value);
        Ok(())
    }

    fn set_items(&mut self, dict: ValueId, items: Vec<ValueId>) -> Result<(), CheckpointError> {
        if !items.len().is_multiple_of(2) {
            return Err(malformed("SETITEMS with an odd number of items".into()));
        }
        let Value::Dict(entries) = &mut self.arena.values[dict.0] else {
            return Err(malformed(format!("SETITEM on a {}", self.arena.get(dict).kind())));
        };
        for pair in items.chunks(2) {
            entries.push((pair[0], pair[1]));
        }
        Ok(())
    }

    fn append(&mut self, list: ValueId, items: Vec<ValueId>) -> Result<(), CheckpointError> {
        let Value::List(values) = &mut self.arena.values[list.0] else {
            return Err(malformed(format!("APPEND to a {}", self.arena.get(list).kind())));
        };
        values.extend(items);
        Ok(())
    }

    /// REDUCE / NEWOBJ: a call, allowed only for the whitelisted constructors.
    fn call(&mut self, callable: ValueId, args: ValueId) -> Result<Value, CheckpointError> {
        let Value::Global(global) = self.arena.get(callable).clone() else {
            return Err(malformed(format!("cannot call a {}", self.arena.get(callable).kind())));
        };
        let args = self.arena.items(args, "call arguments")?.to_vec();
        match global {
            Global::OrderedDict if args.is_empty() => Ok(Value::Dict(Vec::new())),
            Global::OrderedDict => Err(malformed("OrderedDict called with arguments".into())),
            Global::RebuildTensor => {
                if args.len() < 4 {
                    return Err(malformed(format!("_rebuild_tensor_v2 with {} arguments", args.len())));
                }
                let Value::Storage(storage) = self.arena.get(args[0]).clone() else {
                    return Err(malformed(format!(
                        "_rebuild_tensor_v2 on a {}, not a storage",
                        self.arena.get(args[0]).kind()
                    )));
                };
                let rank = self.arena.items(args[2], "tensor size")?.len();
                if rank > MAX_TENSOR_RANK {
                    return Err(malformed(format!(
                        "tensor with {rank} dimensions (at most {MAX_TENSOR_RANK})"
                    )));
                }
                let offset = self.arena.usize(args[1], "tensor storage offset")?;
                let shape = self.arena.usizes(args[2], "tensor size")?;
                let strides = self.arena.usizes(args[3], "tensor stride")?;
                if shape.len() != strides.len() {
                    return Err(malformed(format!(
                        "tensor size has {} dims but stride has {}",
                        shape.len(),
                        strides.len()
                    )));
                }
                Ok(Value::Tensor(TensorRef { storage, offset, shape, strides }))
            }
            Global::RebuildParameter => {
                let first =
                    *args.first().ok_or_else(|| malformed("_rebuild_parameter without data".into()))?;
                match self.arena.get(first) {
                    Value::Tensor(t) => Ok(Value::Tensor(t.clone())),
                    other => Err(malformed(format!("_rebuild_parameter of a {}", other.kind()))),
                }
            }
            Global::StorageType(_) | Global::Dtype(_) => {
                Err(malformed("torch storage types and dtypes cannot be called".into()))
            }
        }
    }

    /// Executes one opcode; returns true at STOP.
    fn step(&mut self, op: u8, persistent_load: &mut PersistentLoad) -> Result<bool, CheckpointError> {
        match op {
            b'.' => return Ok(true),
            0x80 => {
                let proto = self.byte()?;
                if proto > 5 {
                    return Err(malformed(format!("unsupported pickle protocol {proto}")));
                }
            }
            0x95 => {
                // FRAME: a length hint only.
                self.take(8)?;
            }
            b'(' => self.marks.push(self.stack.len()),
            b'0' => {
                self.pop()?;
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let top = self.top()?;
                self.stack.push(top);
            }
            b'N' => self.push(Value::None),
            0x88 => self.push(Value::Bool(true)),
            0x89 => self.push(Value::Bool(false)),
            b'J' => {
                let v = self.le_u64(4)? as u32 as i32;
                self.push(Value::Int(v as i64));
            }
            b'K' => {
                let v = self.byte()?;
                self.push(Value::Int(v as i64));
            }
            b'M' => {
                let v = self.le_u64(2)?;
                self.push(Value::Int(v as i64));
            }
            0x8a => {
                let n = self.byte()? as u64;
                self.long(n)?;
            }
            0x8b => {
                let n = self.le_u64(4)? as u32 as i32;
                let n = u64::try_from(n).map_err(|_| malformed("negative LONG4 length".into()))?;
                self.long(n)?;
            }
            b'I' => {
                let line = self.line()?.trim().to_string();
                let value = match line.as_str() {
                    "00" => Value::Bool(false),
                    "01" => Value::Bool(true),
                    text => Value::Int(text.parse().map_err(|_| malformed(format!("bad INT {text:?}")))?),
                };
                self.push(value);
            }
            b'L' => {
                let line = self.line()?.trim().trim_end_matches('L').to_string();
                let v: i64 = line.parse().map_err(|_| malformed(format!("bad LONG {line:?}")))?;
                self.push(Value::Int(v));
            }
            b'G' => {
                let bits = self.take(8)?;
                let v = f64::from_be_bytes(bits.try_into().expect("8 bytes"));
                self.push(Value::Float(v));
            }
            b'X' => {
                let n = self.le_u64(4)?;
                self.text(n)?;
            }
            0x8c => {
                let n = self.byte()? as u64;
                self.text(n)?;
            }
            0x8d => {
                let n = self.le_u64(8)?;
                self.text(n)?;
            }
            // BINSTRING / SHORT_BINSTRING: Python 2 str, decoded as text when it is UTF-8.
            b'T' | b'U' => {
                let n = if op == b'T' { self.le_u64(4)? } else { self.byte()? as u64 };
                let bytes = self.take(n)?.to_vec();
                match String::from_utf8(bytes) {
                    Ok(s) => self.push(Value::Str(s)),
                    Err(e) => self.push(Value::Bytes(e.into_bytes())),
                }
            }
            b'B' => {
                let n = self.le_u64(4)?;
                self.bytes(n)?;
            }
            b'C' => {
                let n = self.byte()? as u64;
                self.bytes(n)?;
            }
            0x8e => {
                let n = self.le_u64(8)?;
                self.bytes(n)?;
            }
            b')' => self.push(Value::Tuple(Vec::new())),
            b't' => {
                let items = self.pop_mark()?;
                self.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if self.stack.len() < n {
                    return Err(malformed("stack underflow".into()));
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.push(Value::Tuple(items));
            }
            b']' => self.push(Value::List(Vec::new())),
            b'l' => {
                let items = self.pop_mark()?;
                self.push(Value::List(items));
            }
            b'}' => self.push(Value::Dict(Vec::new())),
            b'd' => {
                let items = self.pop_mark()?;
                let dict = self.arena.push(Value::Dict(Vec::new()));
                self.set_items(dict, items)?;
                self.stack.push(dict);
            }
            b'a' => {
                let item = self.pop()?;
                let list = self.top()?;
                self.append(list, vec![item])?;
            }
            b'e' => {
                let items = self.pop_mark()?;
                let list = self.top()?;
                self.append(list, items)?;
            }
            b's' => {
                let value = self.pop()?;
                let key = self.pop()?;
                let dict = self.top()?;
                self.set_items(dict, vec![key, value])?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                let dict = self.top()?;
                self.set_items(dict, items)?;
            }
            b'q' => {
                let i = self.byte()? as u64;
                self.memo_put(i)?;
            }
            b'r' => {
                let i = self.le_u64(4)?;
                self.memo_put(i)?;
            }
            b'p' => {
                let line = self.line()?.to_string();
                let i = line.parse().map_err(|_| malformed(format!("bad PUT index {line:?}")))?;
                self.memo_put(i)?;
            }
            0x94 => {
                let i = self.memo.len() as u64;
                self.memo_put(i)?;
            }
            b'h' => {
                let i = self.byte()? as u64;
                let id = self.memo_get(i)?;
                self.stack.push(id);
            }
            b'j' => {
                let i = self.le_u64(4)?;
                let id = self.memo_get(i)?;
                self.stack.push(id);
            }
            b'g' => {
                let line = self.line()?.to_string();
                let i = line.parse().map_err(|_| malformed(format!("bad GET index {line:?}")))?;
                let id = self.memo_get(i)?;
                self.stack.push(id);
            }
            b'c' => {
                let module = self.line()?.to_string();
                let name = self.line()?.to_string();
                let global = Global::resolve(&module, &name)?;
                self.push(Value::Global(global));
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Some(module), Some(name)) = (self.arena.str(module), self.arena.str(name)) else {
                    return Err(malformed("STACK_GLOBAL needs two strings".into()));
                };
                let global = Global::resolve(module, name)?;
                self.push(Value::Global(global));
            }
            b'R' | 0x81 => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let value = self.call(callable, args)?;
                self.push(value);
            }
            b'b' => {
                // BUILD: object state. State dicts carry `_metadata` this way; it is dropped.
                let _state = self.pop()?;
                let target = self.top()?;
                match self.arena.get(target) {
                    Value::Dict(_) | Value::Tensor(_) => {}
                    other => return Err(malformed(format!("BUILD on a {}", other.kind()))),
                }
            }
            b'Q' => {
                let pid = self.pop()?;
                let storage = persistent_load(self.arena, pid)?;
                self.push(Value::Storage(storage));
            }
            b'P' => return Err(malformed("text persistent ids (PERSID) are not used by torch.save".into())),
            _ => return Err(malformed(format!("unsupported opcode 0x{op:02x}"))),
        }
        Ok(false)
    }
}

/// Reads the persistent id tuple both containers use:
/// `('storage', storage_type, key, location, numel[, view_metadata])`.
pub fn storage_from_persistent_id(arena: &Arena, pid: ValueId) -> Result<StorageRef, CheckpointError> {
    let items = arena.items(pid, "persistent id")?;
    if items.len() < 5 || arena.str(items[0]) != Some("storage") {
        return Err(malformed("persistent id is not ('storage', type, key, location, numel)".into()));
    }
    let dtype = match arena.get(items[1]) {
        Value::Global(Global::StorageType(dtype)) => *dtype,
        other => return Err(malformed(format!("persistent id storage type is a {}", other.kind()))),
    };
    let key = match arena.get(items[2]) {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        other => return Err(malformed(format!("storage key is a {}", other.kind()))),
    };
    let numel = arena.usize(items[4], "storage size")?;
    let view = match items.get(5).map(|&v| arena.get(v)) {
        None | Some(Value::None) => None,
        Some(Value::Tuple(view)) if view.len() == 3 => {
            Some((arena.usize(view[1], "storage view offset")?, arena.usize(view[2], "storage view size")?))
        }
        Some(other) => return Err(malformed(format!("storage view metadata is a {}", other.kind()))),
    };
    Ok(StorageRef { dtype, key, numel, view })
}
