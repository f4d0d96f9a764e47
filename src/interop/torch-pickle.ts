/**
 * A restricted unpickler (pickle protocols 0-5) for PyTorch tensor state dicts.
 *
 * A pickle is a program: GLOBAL names a Python callable, REDUCE calls it. Loading an untrusted
 * pickle with Python's `pickle` can therefore run anything (`os.system`, `builtins.eval`). This
 * reader never runs Python: it resolves every global against a fixed allow-list of the few
 * callables that tensor state dicts need (OrderedDict, the `torch._utils._rebuild_*` functions,
 * torch.Size, storage classes, dtypes) and refuses any other global at the moment its name is
 * read, before a single call is made. The allowed callables are reimplemented here as pure data
 * construction, so REDUCE/NEWOBJ/BUILD/INST/OBJ can only ever build containers and tensor views.
 */
import { DTYPE_GLOBAL, STORAGE_CLASS_DTYPE, TorchDType, TorchStorage, TorchTensor } from './torch-tensor.js';

export type PyKey = string | number | bigint | boolean | null;

export type PyValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | PyValue[]
  | PyTuple
  | PyDict
  | PySet
  | PyGlobal
  | TorchStorage
  | TorchTensor;

export class PyTuple {
  constructor(readonly items: readonly PyValue[]) {}
}

/** A Python dict or collections.OrderedDict (both keep insertion order). */
export class PyDict {
  readonly entries = new Map<PyKey, PyValue>();
  /** Instance attributes set by BUILD (a torch state_dict carries `_metadata` this way). */
  attributes: PyValue = null;
  constructor(readonly ordered = false) {}
}

export class PySet {
  constructor(
    readonly items: PyValue[],
    readonly frozen: boolean,
  ) {}
}

/** The roles an allowed global can play; anything not listed here is refused. */
export type GlobalRole =
  | { kind: 'ordered-dict' }
  | { kind: 'rebuild-tensor' }
  | { kind: 'rebuild-tensor-v2' }
  | { kind: 'rebuild-tensor-v3' }
  | { kind: 'rebuild-parameter' }
  | { kind: 'rebuild-parameter-with-state' }
  | { kind: 'rebuild-from-type-v2' }
  | { kind: 'size' }
  | { kind: 'codecs-encode' }
  | { kind: 'storage-class'; dtype: TorchDType | 'untyped' }
  | { kind: 'dtype'; dtype: TorchDType }
  | { kind: 'tensor-class' };

/** A reference to an allowed Python global. */
export class PyGlobal {
  constructor(
    readonly module: string,
    readonly name: string,
    readonly role: GlobalRole,
  ) {}
  get qualifiedName(): string {
    return `${this.module}.${this.name}`;
  }
}

export class PickleError extends Error {
  override name = 'PickleError';
}
/** A pickle asked for something this reader refuses to do (a global outside the allow-list...). */
export class PickleSecurityError extends PickleError {
  override name = 'PickleSecurityError';
}

const FIXED_GLOBALS: Record<string, GlobalRole> = {
  'collections.OrderedDict': { kind: 'ordered-dict' },
  'torch._utils._rebuild_tensor': { kind: 'rebuild-tensor' },
  'torch._utils._rebuild_tensor_v2': { kind: 'rebuild-tensor-v2' },
  'torch._utils._rebuild_tensor_v3': { kind: 'rebuild-tensor-v3' },
  'torch._utils._rebuild_parameter': { kind: 'rebuild-parameter' },
  'torch._utils._rebuild_parameter_with_state': { kind: 'rebuild-parameter-with-state' },
  'torch._tensor._rebuild_from_type_v2': { kind: 'rebuild-from-type-v2' },
  'torch._utils._rebuild_from_type_v2': { kind: 'rebuild-from-type-v2' },
  'torch.Size': { kind: 'size' },
  '_codecs.encode': { kind: 'codecs-encode' },
  'torch.Tensor': { kind: 'tensor-class' },
  'torch._tensor.Tensor': { kind: 'tensor-class' },
  'torch.nn.parameter.Parameter': { kind: 'tensor-class' },
  'torch.UntypedStorage': { kind: 'storage-class', dtype: 'untyped' },
  'torch._UntypedStorage': { kind: 'storage-class', dtype: 'untyped' },
  'torch.storage.UntypedStorage': { kind: 'storage-class', dtype: 'untyped' },
  'torch.storage._UntypedStorage': { kind: 'storage-class', dtype: 'untyped' },
};

/** The allow-list: the role of `module.name`, or null when the global must be refused. */
export function allowedGlobal(module: string, name: string): GlobalRole | null {
  const qualified = `${module}.${name}`;
  if (Object.hasOwn(FIXED_GLOBALS, qualified)) return FIXED_GLOBALS[qualified];
  if ((module === 'torch' || module === 'torch.cuda') && Object.hasOwn(STORAGE_CLASS_DTYPE, name)) {
    return { kind: 'storage-class', dtype: STORAGE_CLASS_DTYPE[name] };
  }
  if (module === 'torch' && Object.hasOwn(DTYPE_GLOBAL, name)) return { kind: 'dtype', dtype: DTYPE_GLOBAL[name] };
  // Legacy tensor type names, recorded (never called) by the pre-1.0 tar format.
  if ((module === 'torch' || module === 'torch.cuda') && /^(Half|BFloat16|Float|Double|Long|Int|Short|Char|Byte|Bool)Tensor$/.test(name)) {
    return { kind: 'tensor-class' };
  }
  return null;
}

const ALLOWED_SUMMARY = 'collections.OrderedDict, torch._utils._rebuild_tensor[_v2|_v3], torch._utils._rebuild_parameter[_with_state], torch._tensor._rebuild_from_type_v2, torch.Size, torch.<Type>Storage, torch.<dtype>';

export interface UnpickleOptions {
  /** Names the file and entry in every error message. */
  source: string;
  /** Byte offset where the pickle starts (several pickles follow each other in legacy files). */
  offset?: number;
  /** Resolves a persistent id (torch storages); a pickle with persistent ids and no resolver is refused. */
  persistentLoad?: (pid: PyValue) => PyValue;
}

export interface UnpickleResult {
  value: PyValue;
  /** Offset just after the STOP opcode. */
  end: number;
}

// Opcodes (pickletools names).
const OP = {
  MARK: 0x28, STOP: 0x2e, POP: 0x30, POP_MARK: 0x31, DUP: 0x32, FLOAT: 0x46, INT: 0x49, BININT: 0x4a,
  BININT1: 0x4b, LONG: 0x4c, BININT2: 0x4d, NONE: 0x4e, PERSID: 0x50, BINPERSID: 0x51, REDUCE: 0x52,
  STRING: 0x53, BINSTRING: 0x54, SHORT_BINSTRING: 0x55, UNICODE: 0x56, BINUNICODE: 0x58, APPEND: 0x61,
  BUILD: 0x62, GLOBAL: 0x63, DICT: 0x64, EMPTY_DICT: 0x7d, APPENDS: 0x65, GET: 0x67, BINGET: 0x68,
  INST: 0x69, LONG_BINGET: 0x6a, LIST: 0x6c, EMPTY_LIST: 0x5d, OBJ: 0x6f, PUT: 0x70, BINPUT: 0x71,
  LONG_BINPUT: 0x72, SETITEM: 0x73, TUPLE: 0x74, EMPTY_TUPLE: 0x29, SETITEMS: 0x75, BINFLOAT: 0x47,
  PROTO: 0x80, NEWOBJ: 0x81, EXT1: 0x82, EXT2: 0x83, EXT4: 0x84, TUPLE1: 0x85, TUPLE2: 0x86, TUPLE3: 0x87,
  NEWTRUE: 0x88, NEWFALSE: 0x89, LONG1: 0x8a, LONG4: 0x8b, BINBYTES: 0x42, SHORT_BINBYTES: 0x43,
  SHORT_BINUNICODE: 0x8c, BINUNICODE8: 0x8d, BINBYTES8: 0x8e, EMPTY_SET: 0x8f, ADDITEMS: 0x90,
  FROZENSET: 0x91, NEWOBJ_EX: 0x92, STACK_GLOBAL: 0x93, MEMOIZE: 0x94, FRAME: 0x95, BYTEARRAY8: 0x96,
  NEXT_BUFFER: 0x97, READONLY_BUFFER: 0x98,
} as const;

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Read one pickle from `buf` (starting at `opts.offset`), building only allowed objects. */
export function unpickle(buf: Uint8Array, opts: UnpickleOptions): UnpickleResult {
  return new Unpickler(buf, opts).load();
}

class Unpickler {
  private pos: number;
  // MARK saves the current stack on the metastack and starts an empty one (as CPython does).
  private stack: PyValue[] = [];
  private metastack: PyValue[][] = [];
  private memo = new Map<number, PyValue>();
  private opStart = 0;
  private opName = '';
  private readonly dv: DataView;

  constructor(
    private readonly buf: Uint8Array,
    private readonly opts: UnpickleOptions,
  ) {
    this.pos = opts.offset ?? 0;
    this.dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  private fail(message: string): never {
    throw new PickleError(`${this.opts.source}: ${message} (opcode ${this.opName} at byte ${this.opStart})`);
  }

  private refuse(message: string): never {
    throw new PickleSecurityError(`${this.opts.source}: ${message} (opcode ${this.opName} at byte ${this.opStart})`);
  }

  private need(n: number, what: string): void {
    if (n < 0 || this.pos + n > this.buf.length) {
      this.fail(`truncated pickle: ${what} needs ${n} bytes but only ${Math.max(0, this.buf.length - this.pos)} remain`);
    }
  }

  private bytes(n: number, what: string): Uint8Array {
    this.need(n, what);
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  private u8(): number {
    this.need(1, 'a 1-byte argument');
    return this.buf[this.pos++];
  }

  private u16(): number {
    this.need(2, 'a 2-byte argument');
    const v = this.dv.getUint16(this.pos, true);
    this.pos += 2;
    return v;
  }

  private u32(): number {
    this.need(4, 'a 4-byte argument');
    const v = this.dv.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }

  private i32(): number {
    this.need(4, 'a 4-byte argument');
    const v = this.dv.getInt32(this.pos, true);
    this.pos += 4;
    return v;
  }

  private u64(): number {
    this.need(8, 'an 8-byte length');
    const v = this.dv.getBigUint64(this.pos, true);
    this.pos += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) this.fail(`length ${v} is too large`);
    return Number(v);
  }

  private line(): string {
    const nl = this.buf.indexOf(0x0a, this.pos);
    if (nl < 0) this.fail('truncated pickle: missing end of line');
    const raw = this.buf.subarray(this.pos, nl);
    this.pos = nl + 1;
    return latin1(raw);
  }

  private text(raw: Uint8Array): string {
    try {
      return utf8.decode(raw);
    } catch {
      this.fail('string is not valid UTF-8');
    }
  }

  private push(v: PyValue): void {
    this.stack.push(v);
  }

  private pop(): PyValue {
    if (this.stack.length === 0) this.fail('stack underflow');
    return this.stack.pop() as PyValue;
  }

  private top(): PyValue {
    if (this.stack.length === 0) this.fail('stack underflow');
    return this.stack[this.stack.length - 1];
  }

  private popMark(): PyValue[] {
    const items = this.stack;
    const outer = this.metastack.pop();
    if (!outer) this.fail('no MARK to pop to');
    this.stack = outer;
    return items;
  }

  private memoGet(index: number): PyValue {
    if (!this.memo.has(index)) this.fail(`memo entry ${index} is not defined`);
    return this.memo.get(index) as PyValue;
  }

  load(): UnpickleResult {
    const buf = this.buf;
    for (;;) {
      if (this.pos >= buf.length) {
        this.opStart = this.pos;
        this.opName = 'EOF';
        this.fail('truncated pickle: reached the end of the data before STOP');
      }
      this.opStart = this.pos;
      const op = buf[this.pos++];
      this.opName = opcodeName(op);
      switch (op) {
        case OP.PROTO: {
          const proto = this.u8();
          if (proto > 5) this.fail(`unsupported pickle protocol ${proto} (this reader knows protocols 0-5)`);
          break;
        }
        case OP.FRAME:
          this.u64(); // Frames are only a buffering hint; the opcodes inside follow directly.
          break;
        case OP.STOP: {
          const value = this.pop();
          return { value, end: this.pos };
        }
        case OP.MARK:
          this.metastack.push(this.stack);
          this.stack = [];
          break;
        case OP.POP:
          if (this.stack.length === 0 && this.metastack.length) this.popMark();
          else this.pop();
          break;
        case OP.POP_MARK:
          this.popMark();
          break;
        case OP.DUP:
          this.push(this.top());
          break;
        case OP.NONE:
          this.push(null);
          break;
        case OP.NEWTRUE:
          this.push(true);
          break;
        case OP.NEWFALSE:
          this.push(false);
          break;
        case OP.INT: {
          const s = this.line().trim();
          if (s === '01') this.push(true);
          else if (s === '00') this.push(false);
          else this.push(parseIntText(s, () => this.fail(`bad INT literal '${s}'`)));
          break;
        }
        case OP.LONG: {
          const s = this.line().trim().replace(/L$/, '');
          this.push(parseIntText(s, () => this.fail(`bad LONG literal '${s}'`)));
          break;
        }
        case OP.BININT:
          this.push(this.i32());
          break;
        case OP.BININT1:
          this.push(this.u8());
          break;
        case OP.BININT2:
          this.push(this.u16());
          break;
        case OP.LONG1:
          this.push(decodeLong(this.bytes(this.u8(), 'LONG1 digits')));
          break;
        case OP.LONG4: {
          const n = this.i32();
          if (n < 0) this.fail('negative LONG4 length');
          this.push(decodeLong(this.bytes(n, 'LONG4 digits')));
          break;
        }
        case OP.FLOAT: {
          const s = this.line().trim();
          const v = Number(s);
          if (s === '' || (Number.isNaN(v) && !/^[-+]?nan$/i.test(s))) this.fail(`bad FLOAT literal '${s}'`);
          this.push(v);
          break;
        }
        case OP.BINFLOAT: {
          this.need(8, 'BINFLOAT');
          this.push(this.dv.getFloat64(this.pos, false));
          this.pos += 8;
          break;
        }
        case OP.STRING:
          this.push(this.text(unquotePythonString(this.line(), (m) => this.fail(m))));
          break;
        case OP.BINSTRING: {
          const n = this.i32();
          this.push(this.text(this.bytes(n, 'BINSTRING')));
          break;
        }
        case OP.SHORT_BINSTRING:
          this.push(this.text(this.bytes(this.u8(), 'SHORT_BINSTRING')));
          break;
        case OP.UNICODE:
          this.push(decodeRawUnicodeEscape(this.line()));
          break;
        case OP.BINUNICODE:
          this.push(this.text(this.bytes(this.u32(), 'BINUNICODE')));
          break;
        case OP.SHORT_BINUNICODE:
          this.push(this.text(this.bytes(this.u8(), 'SHORT_BINUNICODE')));
          break;
        case OP.BINUNICODE8:
          this.push(this.text(this.bytes(this.u64(), 'BINUNICODE8')));
          break;
        case OP.BINBYTES:
          this.push(new Uint8Array(this.bytes(this.u32(), 'BINBYTES')));
          break;
        case OP.SHORT_BINBYTES:
          this.push(new Uint8Array(this.bytes(this.u8(), 'SHORT_BINBYTES')));
          break;
        case OP.BINBYTES8:
        case OP.BYTEARRAY8:
          this.push(new Uint8Array(this.bytes(this.u64(), 'BINBYTES8')));
          break;
        case OP.NEXT_BUFFER:
          this.refuse('out-of-band buffers (pickle protocol 5 NEXT_BUFFER) are not supported');
          break;
        case OP.READONLY_BUFFER:
          this.top();
          break;
        case OP.EMPTY_TUPLE:
          this.push(new PyTuple([]));
          break;
        case OP.TUPLE1:
          this.push(new PyTuple([this.pop()]));
          break;
        case OP.TUPLE2: {
          const b = this.pop();
          const a = this.pop();
          this.push(new PyTuple([a, b]));
          break;
        }
        case OP.TUPLE3: {
          const c = this.pop();
          const b = this.pop();
          const a = this.pop();
          this.push(new PyTuple([a, b, c]));
          break;
        }
        case OP.TUPLE:
          this.push(new PyTuple(this.popMark()));
          break;
        case OP.EMPTY_LIST:
          this.push([]);
          break;
        case OP.LIST:
          this.push(this.popMark());
          break;
        case OP.APPEND: {
          const v = this.pop();
          this.listTarget().push(v);
          break;
        }
        case OP.APPENDS: {
          const items = this.popMark();
          this.listTarget().push(...items);
          break;
        }
        case OP.EMPTY_DICT:
          this.push(new PyDict());
          break;
        case OP.DICT: {
          const items = this.popMark();
          const d = new PyDict();
          this.setItems(d, items);
          this.push(d);
          break;
        }
        case OP.SETITEM: {
          const v = this.pop();
          const k = this.pop();
          this.setItems(this.dictTarget(), [k, v]);
          break;
        }
        case OP.SETITEMS: {
          const items = this.popMark();
          this.setItems(this.dictTarget(), items);
          break;
        }
        case OP.EMPTY_SET:
          this.push(new PySet([], false));
          break;
        case OP.ADDITEMS: {
          const items = this.popMark();
          const s = this.top();
          if (!(s instanceof PySet) || s.frozen) this.fail('ADDITEMS target is not a set');
          s.items.push(...items);
          break;
        }
        case OP.FROZENSET:
          this.push(new PySet(this.popMark(), true));
          break;
        case OP.PUT: {
          const idx = Number.parseInt(this.line(), 10);
          if (!Number.isSafeInteger(idx) || idx < 0) this.fail('bad PUT index');
          this.memo.set(idx, this.top());
          break;
        }
        case OP.BINPUT:
          this.memo.set(this.u8(), this.top());
          break;
        case OP.LONG_BINPUT:
          this.memo.set(this.u32(), this.top());
          break;
        case OP.MEMOIZE:
          this.memo.set(this.memo.size, this.top());
          break;
        case OP.GET: {
          const idx = Number.parseInt(this.line(), 10);
          this.push(this.memoGet(idx));
          break;
        }
        case OP.BINGET:
          this.push(this.memoGet(this.u8()));
          break;
        case OP.LONG_BINGET:
          this.push(this.memoGet(this.u32()));
          break;
        case OP.GLOBAL: {
          const module = this.line();
          const name = this.line();
          this.push(this.resolveGlobal(module, name));
          break;
        }
        case OP.STACK_GLOBAL: {
          const name = this.pop();
          const module = this.pop();
          if (typeof module !== 'string' || typeof name !== 'string') this.fail('STACK_GLOBAL needs two strings (module, name)');
          this.push(this.resolveGlobal(module, name));
          break;
        }
        case OP.INST: {
          const module = this.line();
          const name = this.line();
          const cls = this.resolveGlobal(module, name);
          const args = this.popMark();
          this.push(this.call(cls, args));
          break;
        }
        case OP.OBJ: {
          const items = this.popMark();
          if (items.length === 0) this.fail('OBJ without a class');
          this.push(this.call(items[0], items.slice(1)));
          break;
        }
        case OP.REDUCE: {
          const args = this.pop();
          const fn = this.pop();
          if (!(args instanceof PyTuple)) this.fail(`REDUCE arguments must be a tuple, got ${describePy(args)}`);
          this.push(this.call(fn, [...args.items]));
          break;
        }
        case OP.NEWOBJ: {
          const args = this.pop();
          const cls = this.pop();
          if (!(args instanceof PyTuple)) this.fail(`NEWOBJ arguments must be a tuple, got ${describePy(args)}`);
          this.push(this.newObject(cls, [...args.items]));
          break;
        }
        case OP.NEWOBJ_EX: {
          const kwargs = this.pop();
          const args = this.pop();
          const cls = this.pop();
          if (!(args instanceof PyTuple)) this.fail(`NEWOBJ_EX arguments must be a tuple, got ${describePy(args)}`);
          if (!(kwargs instanceof PyDict) || kwargs.entries.size) this.refuse('NEWOBJ_EX with keyword arguments is not supported');
          this.push(this.newObject(cls, [...args.items]));
          break;
        }
        case OP.BUILD: {
          const state = this.pop();
          const target = this.top();
          if (target instanceof PyDict) target.attributes = state;
          else if (!(target instanceof TorchTensor)) this.refuse(`BUILD on ${describePy(target)} is not allowed (only OrderedDict and tensors)`);
          break;
        }
        case OP.PERSID:
          this.push(this.persistent(this.line()));
          break;
        case OP.BINPERSID:
          this.push(this.persistent(this.pop()));
          break;
        case OP.EXT1:
        case OP.EXT2:
        case OP.EXT4:
          this.refuse('the copyreg extension registry (EXT1/EXT2/EXT4) is not supported');
          break;
        default:
          this.fail(`unknown opcode 0x${op.toString(16).padStart(2, '0')}`);
      }
    }
  }

  private listTarget(): PyValue[] {
    const t = this.top();
    if (!Array.isArray(t)) this.refuse(`APPEND to ${describePy(t)} is not allowed (only lists)`);
    return t;
  }

  private dictTarget(): PyDict {
    const t = this.top();
    if (!(t instanceof PyDict)) this.refuse(`SETITEM on ${describePy(t)} is not allowed (only dicts)`);
    return t;
  }

  private setItems(d: PyDict, items: PyValue[]): void {
    if (items.length % 2) this.fail('odd number of items for a dict');
    for (let i = 0; i < items.length; i += 2) {
      const k = items[i];
      if (!isKey(k)) this.fail(`unsupported dict key ${describePy(k)} (keys must be str, int, bool or None)`);
      d.entries.set(k, items[i + 1]);
    }
  }

  private resolveGlobal(module: string, name: string): PyGlobal {
    const role = allowedGlobal(module, name);
    if (!role) this.refuse(`refused global '${module}.${name}': only tensor state dicts can be read, and this name is not among the allowed globals (${ALLOWED_SUMMARY})`);
    return new PyGlobal(module, name, role);
  }

  private persistent(pid: PyValue): PyValue {
    if (!this.opts.persistentLoad) this.refuse('persistent id in a pickle that may not reference storages');
    return this.opts.persistentLoad(pid);
  }

  private newObject(cls: PyValue, args: PyValue[]): PyValue {
    if (cls instanceof PyGlobal && (cls.role.kind === 'ordered-dict' || cls.role.kind === 'size')) return this.call(cls, args);
    this.refuse(`NEWOBJ of ${describePy(cls)} is not allowed (only collections.OrderedDict and torch.Size)`);
  }

  /** The allowed callables, reimplemented as data construction. */
  private call(fn: PyValue, args: PyValue[]): PyValue {
    if (!(fn instanceof PyGlobal)) this.refuse(`call of ${describePy(fn)} is not allowed (only allowed globals can be called)`);
    const name = fn.qualifiedName;
    const role = fn.role;
    switch (role.kind) {
      case 'ordered-dict': {
        const d = new PyDict(true);
        if (args.length === 0) return d;
        const pairs = args[0];
        if (args.length !== 1 || !Array.isArray(pairs)) this.fail(`${name} expects no argument or one list of pairs`);
        for (const p of pairs) {
          if (!(p instanceof PyTuple) || p.items.length !== 2) this.fail(`${name}: each item must be a (key, value) pair`);
          this.setItems(d, [p.items[0], p.items[1]]);
        }
        return d;
      }
      case 'rebuild-tensor':
        this.arity(name, args, 4, 4);
        return this.tensor(name, args[0], args[1], args[2], args[3], null, false);
      case 'rebuild-tensor-v2':
        this.arity(name, args, 6, 7);
        return this.tensor(name, args[0], args[1], args[2], args[3], null, args[4] === true);
      case 'rebuild-tensor-v3': {
        this.arity(name, args, 7, 8);
        const dt = args[6];
        if (!(dt instanceof PyGlobal) || dt.role.kind !== 'dtype') this.fail(`${name}: argument 7 must be a torch dtype, got ${describePy(dt)}`);
        return this.tensor(name, args[0], args[1], args[2], args[3], dt.role.dtype, args[4] === true);
      }
      case 'rebuild-parameter':
      case 'rebuild-parameter-with-state': {
        this.arity(name, args, role.kind === 'rebuild-parameter' ? 3 : 4, role.kind === 'rebuild-parameter' ? 3 : 4);
        const data = args[0];
        if (!(data instanceof TorchTensor)) this.fail(`${name}: argument 1 must be a tensor, got ${describePy(data)}`);
        return data;
      }
      case 'rebuild-from-type-v2': {
        this.arity(name, args, 4, 4);
        const [inner, type, innerArgs] = args;
        if (!(type instanceof PyGlobal) || type.role.kind !== 'tensor-class') this.refuse(`${name}: tensor type ${describePy(type)} is not allowed (only torch.Tensor and torch.nn.Parameter)`);
        if (!(innerArgs instanceof PyTuple)) this.fail(`${name}: argument 3 must be a tuple`);
        return this.call(inner, [...innerArgs.items]);
      }
      case 'size': {
        if (args.length === 0) return new PyTuple([]);
        const t = args[0];
        if (args.length !== 1 || !(t instanceof PyTuple || Array.isArray(t))) this.fail(`${name} expects one tuple`);
        return new PyTuple(t instanceof PyTuple ? t.items : t);
      }
      case 'codecs-encode': {
        const [s, enc] = args;
        if (typeof s !== 'string' || (enc !== 'latin1' && enc !== 'latin-1')) this.refuse(`${name} is only allowed as encode(str, 'latin1') (how protocol 2 stores bytes)`);
        const out = new Uint8Array(s.length);
        for (let i = 0; i < s.length; i++) {
          const c = s.charCodeAt(i);
          if (c > 255) this.fail(`${name}: character outside latin1`);
          out[i] = c;
        }
        return out;
      }
      case 'storage-class':
      case 'dtype':
      case 'tensor-class':
        this.refuse(`calling ${name} is not allowed (it may only appear as a value)`);
    }
  }

  private arity(name: string, args: PyValue[], min: number, max: number): void {
    if (args.length < min || args.length > max) this.fail(`${name} takes ${min === max ? min : `${min}-${max}`} arguments, got ${args.length}`);
  }

  private tensor(name: string, storage: PyValue, offset: PyValue, size: PyValue, stride: PyValue, dtype: TorchDType | null, requiresGrad: boolean): TorchTensor {
    if (!(storage instanceof TorchStorage)) this.fail(`${name}: argument 1 must be a storage, got ${describePy(storage)}`);
    const off = this.intArg(name, 'storage_offset', offset);
    const shape = this.intTuple(name, 'size', size);
    const strides = this.intTuple(name, 'stride', stride);
    if (shape.length !== strides.length) this.fail(`${name}: size [${shape}] and stride [${strides}] differ in rank`);
    for (const d of shape) if (d < 0) this.fail(`${name}: negative dimension in size [${shape}]`);
    return new TorchTensor(storage, off, shape, strides, dtype ?? storage.dtype, requiresGrad);
  }

  private intArg(name: string, what: string, v: PyValue): number {
    if (typeof v === 'number' && Number.isSafeInteger(v)) return v;
    if (typeof v === 'bigint' && v >= 0n && v <= BigInt(Number.MAX_SAFE_INTEGER)) return Number(v);
    this.fail(`${name}: ${what} must be an integer, got ${describePy(v)}`);
  }

  private intTuple(name: string, what: string, v: PyValue): number[] {
    const items = v instanceof PyTuple ? v.items : Array.isArray(v) ? v : null;
    if (!items) this.fail(`${name}: ${what} must be a tuple of integers, got ${describePy(v)}`);
    return items.map((x) => this.intArg(name, what, x));
  }
}

function isKey(v: PyValue): v is PyKey {
  return v === null || typeof v === 'string' || typeof v === 'number' || typeof v === 'bigint' || typeof v === 'boolean';
}

/** A short Python-ish description of a value for error messages. */
export function describePy(v: PyValue | undefined): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'None';
  if (typeof v === 'boolean') return 'a bool';
  if (typeof v === 'number') return Number.isInteger(v) ? `int ${v}` : `float ${v}`;
  if (typeof v === 'bigint') return `int ${v}`;
  if (typeof v === 'string') return `str '${v.length > 40 ? `${v.slice(0, 40)}...` : v}'`;
  if (v instanceof Uint8Array) return `bytes (${v.length})`;
  if (Array.isArray(v)) return `a list (${v.length} items)`;
  if (v instanceof PyTuple) return `a tuple (${v.items.length} items)`;
  if (v instanceof PyDict) return v.ordered ? 'an OrderedDict' : 'a dict';
  if (v instanceof PySet) return 'a set';
  if (v instanceof PyGlobal) return v.qualifiedName;
  if (v instanceof TorchStorage) return `a ${v.dtype} storage`;
  return `a ${v.dtype} tensor [${v.shape}]`;
}

function latin1(raw: Uint8Array): string {
  let s = '';
  for (let i = 0; i < raw.length; i++) s += String.fromCharCode(raw[i]);
  return s;
}

function parseIntText(s: string, bad: () => never): number | bigint {
  if (!/^[-+]?\d+$/.test(s)) bad();
  const big = BigInt(s);
  return big >= BigInt(Number.MIN_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
}

/** Little-endian two's complement integer (LONG1/LONG4), as a number when it is safe. */
export function decodeLong(bytes: Uint8Array): number | bigint {
  if (bytes.length === 0) return 0;
  let v = 0n;
  for (let i = bytes.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(bytes[i]);
  if (bytes[bytes.length - 1] & 0x80) v -= 1n << BigInt(bytes.length * 8);
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

/** Protocol 0 STRING argument: a Python repr in single or double quotes, with backslash escapes. */
function unquotePythonString(line: string, bad: (m: string) => never): Uint8Array {
  const s = line.trimEnd();
  if (s.length < 2 || (s[0] !== "'" && s[0] !== '"') || s[s.length - 1] !== s[0]) bad('STRING argument is not quoted');
  const body = s.slice(1, -1);
  const out: number[] = [];
  const simple: Record<string, number> = { n: 10, t: 9, r: 13, '\\': 92, "'": 39, '"': 34, a: 7, b: 8, f: 12, v: 11, '\n': -1 };
  for (let i = 0; i < body.length; i++) {
    const c = body[i];
    if (c !== '\\') {
      out.push(body.charCodeAt(i) & 0xff);
      continue;
    }
    const e = body[++i];
    if (e === undefined) bad('STRING ends in a backslash');
    if (e === 'x') {
      out.push(Number.parseInt(body.slice(i + 1, i + 3), 16));
      i += 2;
    } else if (/[0-7]/.test(e)) {
      let j = i;
      while (j < i + 3 && /[0-7]/.test(body[j] ?? '')) j++;
      out.push(Number.parseInt(body.slice(i, j), 8) & 0xff);
      i = j - 1;
    } else if (Object.hasOwn(simple, e)) {
      if (simple[e] >= 0) out.push(simple[e]);
    } else {
      out.push(92, e.charCodeAt(0) & 0xff);
    }
  }
  return Uint8Array.from(out);
}

/** Protocol 0 UNICODE argument: latin-1 text with \uXXXX and \UXXXXXXXX escapes. */
function decodeRawUnicodeEscape(s: string): string {
  return s.replace(/\\u([0-9a-fA-F]{4})|\\U([0-9a-fA-F]{8})/g, (_m, u4: string | undefined, u8: string | undefined) =>
    String.fromCodePoint(Number.parseInt((u4 ?? u8) as string, 16)),
  );
}

const OPCODE_NAMES: Record<number, string> = Object.fromEntries(Object.entries(OP).map(([k, v]) => [v, k]));

function opcodeName(op: number): string {
  return OPCODE_NAMES[op] ?? `0x${op.toString(16).padStart(2, '0')}`;
}
