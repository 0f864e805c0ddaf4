//! The SQL types. `crdt_type!` gives each one what every type has (storage,
//! text and binary I/O, merge, delta, equality, jsonb cast, merge_agg); the
//! per-type modules add mutators and readers.

use crate::errors::{raise, raise_core};
use converge_core::{Crdt, Error, ErrorKind};
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

mod counters;
pub mod maps;
mod registers;
mod sets;
mod text;


/// Largest encoded CRDT value, in bytes (`converge.max_value_bytes`).
pub static MAX_VALUE_BYTES: GucSetting<i32> = GucSetting::<i32>::new(64 * 1024 * 1024);

pub fn register_gucs() {
    GucRegistry::define_int_guc(
        c"converge.max_value_bytes",
        c"Largest encoded size of one converge CRDT value, in bytes.",
        c"Values that would grow past this size are refused with SQLSTATE 54000 instead of being stored.",
        &MAX_VALUE_BYTES,
        1024,
        512 * 1024 * 1024,
        GucContext::Userset,
        GucFlags::default(),
    );
}

pub fn check_size(len: usize, name: &str) {
    let limit = MAX_VALUE_BYTES.get().max(0) as usize;
    if len > limit {
        raise_core(Error::new(
            ErrorKind::TooLarge,
            format!("{name} value of {len} bytes exceeds converge.max_value_bytes ({limit})"),
        ));
    }
}

/// Encode a state into a fresh varlena datum.
pub fn to_datum<T: Crdt>(v: &T) -> pg_sys::Datum {
    let bytes = converge_core::encode(v);
    check_size(bytes.len(), T::NAME);
    pgrx::rust_byte_slice_to_bytea(&bytes).into_pg().into()
}

/// Decode a stored datum (written by this extension, so structure-checked only).
///
/// # Safety
/// `datum` must be a non-null varlena of the type `T` belongs to.
pub unsafe fn from_datum<T: Crdt>(datum: pg_sys::Datum) -> T {
    let ptr = pg_sys::pg_detoast_datum_packed(datum.cast_mut_ptr());
    let bytes = pgrx::varlena::varlena_to_byte_slice(ptr);
    match converge_core::decode_trusted::<T>(bytes) {
        Ok(v) => v,
        Err(e) => raise(PgSqlErrorCode::ERRCODE_DATA_CORRUPTED, e.message),
    }
}

pub fn text_in<T: Crdt>(input: &core::ffi::CStr) -> T {
    let bytes = input.to_bytes();
    check_size(bytes.len(), T::NAME);
    let s = match std::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(_) => raise(PgSqlErrorCode::ERRCODE_CHARACTER_NOT_IN_REPERTOIRE, "input is not valid UTF-8"),
    };
    match converge_core::from_text::<T>(s) {
        Ok(v) => v,
        Err(e) => raise_core(e),
    }
}

/// `recv`: untrusted bytes from a binary COPY or a client.
///
/// # Safety
/// `buf` must be the StringInfo PostgreSQL passes to a receive function.
pub unsafe fn binary_in<T: Crdt>(buf: &mut pg_sys::StringInfoData) -> T {
    let len = (buf.len - buf.cursor).max(0) as usize;
    check_size(len, T::NAME);
    let bytes = std::slice::from_raw_parts((buf.data as *const u8).add(buf.cursor as usize), len);
    let v = match converge_core::decode::<T>(bytes) {
        Ok(v) => v,
        Err(e) => raise_core(e),
    };
    buf.cursor = buf.len;
    v
}

/// Aggregate state lives in the aggregate's memory context, not the
/// per-row one the transition function is called in.
///
/// # Safety
/// `fcinfo` must be the call info of an aggregate support function.
pub unsafe fn agg_context(fcinfo: pg_sys::FunctionCallInfo, what: &str) -> pg_sys::MemoryContext {
    let mut ctx: pg_sys::MemoryContext = std::ptr::null_mut();
    if pg_sys::AggCheckCallContext(fcinfo, &mut ctx) == 0 {
        raise(PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED, format!("{what} called in non-aggregate context"));
    }
    ctx
}

/// Merge with NULL as the empty value; NULL with NULL is NULL. The result
/// is a state, also when one side is NULL (`Crdt::as_state`).
pub fn merge_nullable<T: Crdt>(a: Option<T>, b: Option<&T>) -> Option<T> {
    let mut m = match (a, b) {
        (None, None) => return None,
        (Some(a), None) => a,
        (None, Some(b)) => b.clone(),
        (Some(mut a), Some(b)) => {
            a.merge(b);
            a
        }
    };
    m.as_state();
    Some(m)
}

macro_rules! crdt_type {
    ($ty:ident, $core:ty) => {
        paste::paste! {
            #[allow(non_camel_case_types)]
            #[derive(pgrx::PostgresType, Clone, Debug, PartialEq)]
            #[inoutfuncs]
            #[bikeshed_postgres_type_manually_impl_from_into_datum]
            pub struct $ty(pub $core);

            impl pgrx::inoutfuncs::InOutFuncs for $ty {
                fn input(input: &core::ffi::CStr) -> Self {
                    $ty($crate::types::text_in::<$core>(input))
                }
                fn output(&self, buffer: &mut pgrx::StringInfo) {
                    buffer.push_str(&converge_core::to_text(&self.0));
                }
            }

            impl pgrx::datum::IntoDatum for $ty {
                fn into_datum(self) -> Option<pgrx::pg_sys::Datum> {
                    Some($crate::types::to_datum(&self.0))
                }
                fn type_oid() -> pgrx::pg_sys::Oid {
                    pgrx::wrappers::rust_regtypein::<Self>()
                }
            }

            unsafe impl pgrx::callconv::BoxRet for $ty {
                unsafe fn box_into<'fcx>(self, fcinfo: &mut pgrx::callconv::FcInfo<'fcx>) -> pgrx::datum::Datum<'fcx> {
                    fcinfo.return_raw_datum($crate::types::to_datum(&self.0))
                }
            }

            impl pgrx::datum::FromDatum for $ty {
                unsafe fn from_polymorphic_datum(
                    datum: pgrx::pg_sys::Datum,
                    is_null: bool,
                    _typoid: pgrx::pg_sys::Oid,
                ) -> Option<Self> {
                    if is_null { None } else { Some($ty($crate::types::from_datum::<$core>(datum))) }
                }
            }

            unsafe impl pgrx::datum::UnboxDatum for $ty {
                type As<'dat> = Self where Self: 'dat;
                unsafe fn unbox<'dat>(datum: pgrx::datum::Datum<'dat>) -> Self::As<'dat> where Self: 'dat {
                    $ty($crate::types::from_datum::<$core>(std::mem::transmute::<pgrx::datum::Datum<'dat>, pgrx::pg_sys::Datum>(datum)))
                }
            }

            unsafe impl<'fcx> pgrx::callconv::ArgAbi<'fcx> for $ty {
                unsafe fn unbox_arg_unchecked(arg: pgrx::callconv::Arg<'_, 'fcx>) -> Self {
                    let index = arg.index();
                    arg.unbox_arg_using_from_datum().unwrap_or_else(|| panic!("argument {index} must not be null"))
                }
            }

            /// The same SQL type seen as its stored bytes, for functions that
            /// can work on the encoding without decoding (merge_agg).
            #[allow(non_camel_case_types)]
            pub struct [<$ty _bytes>](*const pgrx::pg_sys::varlena);

            impl [<$ty _bytes>] {
                fn bytes(&self) -> &[u8] {
                    unsafe { pgrx::varlena::varlena_to_byte_slice(self.0) }
                }
            }

            unsafe impl pgrx::pgrx_sql_entity_graph::metadata::SqlTranslatable for [<$ty _bytes>] {
                const TYPE_IDENT: &'static str = <$ty as pgrx::pgrx_sql_entity_graph::metadata::SqlTranslatable>::TYPE_IDENT;
                const TYPE_ORIGIN: pgrx::pgrx_sql_entity_graph::metadata::TypeOrigin =
                    <$ty as pgrx::pgrx_sql_entity_graph::metadata::SqlTranslatable>::TYPE_ORIGIN;
                const ARGUMENT_SQL: Result<pgrx::pgrx_sql_entity_graph::metadata::SqlMappingRef, pgrx::pgrx_sql_entity_graph::metadata::ArgumentError> =
                    <$ty as pgrx::pgrx_sql_entity_graph::metadata::SqlTranslatable>::ARGUMENT_SQL;
                const RETURN_SQL: Result<pgrx::pgrx_sql_entity_graph::metadata::ReturnsRef, pgrx::pgrx_sql_entity_graph::metadata::ReturnsError> =
                    <$ty as pgrx::pgrx_sql_entity_graph::metadata::SqlTranslatable>::RETURN_SQL;
            }

            impl pgrx::datum::FromDatum for [<$ty _bytes>] {
                unsafe fn from_polymorphic_datum(
                    datum: pgrx::pg_sys::Datum,
                    is_null: bool,
                    _typoid: pgrx::pg_sys::Oid,
                ) -> Option<Self> {
                    if is_null {
                        None
                    } else {
                        Some([<$ty _bytes>](pgrx::pg_sys::pg_detoast_datum_packed(datum.cast_mut_ptr())))
                    }
                }
            }

            unsafe impl<'fcx> pgrx::callconv::ArgAbi<'fcx> for [<$ty _bytes>] {
                unsafe fn unbox_arg_unchecked(arg: pgrx::callconv::Arg<'_, 'fcx>) -> Self {
                    let index = arg.index();
                    arg.unbox_arg_using_from_datum().unwrap_or_else(|| panic!("argument {index} must not be null"))
                }
            }

            /// Binary output: the stored form, `[version, tag, body]`.
            #[pg_extern(immutable, strict, parallel_safe)]
            fn [<$ty _send>](v: $ty) -> Vec<u8> {
                converge_core::encode(&v.0)
            }

            /// Binary input: validated and required to be canonical.
            #[pg_extern(immutable, strict, parallel_safe)]
            fn [<$ty _recv>](mut internal: pgrx::datum::Internal) -> $ty {
                let buf = unsafe { internal.get_mut::<pgrx::pg_sys::StringInfoData>() }
                    .unwrap_or_else(|| $crate::errors::raise(pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "no receive buffer"));
                $ty(unsafe { $crate::types::binary_in::<$core>(buf) })
            }

            /// `bytea::type`: the same validation as binary input.
            #[pg_extern(immutable, strict, parallel_safe)]
            fn [<$ty _from_bytea>](bytes: &[u8]) -> $ty {
                use $crate::errors::OrRaise;
                $crate::types::check_size(bytes.len(), stringify!($ty));
                $ty(converge_core::decode::<$core>(bytes).or_raise())
            }

            #[pg_extern(immutable, parallel_safe, name = "merge")]
            fn [<$ty _merge>](a: Option<$ty>, b: Option<$ty>) -> Option<$ty> {
                $crate::types::merge_nullable(a.map(|x| x.0), b.as_ref().map(|x| &x.0)).map($ty)
            }

            #[pg_extern(immutable, parallel_safe, name = "delta")]
            fn [<$ty _delta>](new: Option<$ty>, old: Option<$ty>) -> Option<$ty> {
                let new = new?;
                let old = old.map(|o| o.0).unwrap_or_default();
                Some($ty(<$core as converge_core::Crdt>::delta(&new.0, &old)))
            }

            #[pg_extern(immutable, strict, parallel_safe)]
            fn [<$ty _eq>](a: $ty, b: $ty) -> bool {
                a.0 == b.0
            }

            #[pg_extern(immutable, strict, parallel_safe)]
            fn [<$ty _ne>](a: $ty, b: $ty) -> bool {
                a.0 != b.0
            }

            #[pg_extern(immutable, strict, parallel_safe)]
            fn [<$ty _to_jsonb>](v: $ty) -> pgrx::JsonB {
                use $crate::errors::OrRaise;
                pgrx::JsonB(<$core as converge_core::Crdt>::to_user_json(&v.0).or_raise())
            }

            #[pg_extern(immutable, parallel_safe)]
            fn [<$ty _agg_trans>](
                mut state: pgrx::datum::Internal,
                v: Option<[<$ty _bytes>]>,
                fcinfo: pgrx::pg_sys::FunctionCallInfo,
            ) -> pgrx::datum::Internal {
                use converge_core::Crdt;
                unsafe {
                    let ctx = $crate::types::agg_context(fcinfo, "merge_agg");
                    if let Some(v) = v {
                        match state.get_mut::<$core>() {
                            // Merge straight from the stored bytes: no decoded copy per row.
                            Some(s) => {
                                if let Err(e) = s.merge_encoded(v.bytes()) {
                                    $crate::errors::raise(pgrx::PgSqlErrorCode::ERRCODE_DATA_CORRUPTED, e.message);
                                }
                            }
                            None => {
                                let mut first = $crate::types::from_bytes_trusted::<$core>(v.bytes());
                                first.as_state();
                                let p = pgrx::PgMemoryContexts::For(ctx).leak_and_drop_on_delete(first);
                                state = pgrx::datum::Internal::from(Some(pgrx::pg_sys::Datum::from(p)));
                            }
                        }
                    }
                }
                state
            }

            #[pg_extern(immutable, parallel_safe)]
            fn [<$ty _agg_combine>](
                mut a: pgrx::datum::Internal,
                b: pgrx::datum::Internal,
                fcinfo: pgrx::pg_sys::FunctionCallInfo,
            ) -> pgrx::datum::Internal {
                use converge_core::Crdt;
                unsafe {
                    let ctx = $crate::types::agg_context(fcinfo, "merge_agg");
                    match (a.get_mut::<$core>(), b.get::<$core>()) {
                        (_, None) => a,
                        (Some(x), Some(y)) => {
                            x.merge(y);
                            a
                        }
                        (None, Some(y)) => {
                            let mut y = y.clone();
                            y.as_state();
                            let p = pgrx::PgMemoryContexts::For(ctx).leak_and_drop_on_delete(y);
                            pgrx::datum::Internal::from(Some(pgrx::pg_sys::Datum::from(p)))
                        }
                    }
                }
            }

            #[pg_extern(immutable, parallel_safe)]
            fn [<$ty _agg_final>](state: pgrx::datum::Internal) -> Option<$ty> {
                unsafe { state.get::<$core>() }.map(|s| $ty(s.clone()))
            }

            #[pg_extern(immutable, strict, parallel_safe)]
            fn [<$ty _agg_serial>](state: pgrx::datum::Internal) -> Vec<u8> {
                match unsafe { state.get::<$core>() } {
                    Some(s) => converge_core::encode(s),
                    None => Vec::new(),
                }
            }

            #[pg_extern(immutable, strict, parallel_safe)]
            fn [<$ty _agg_deserial>](
                bytes: &[u8],
                _unused: pgrx::datum::Internal,
                fcinfo: pgrx::pg_sys::FunctionCallInfo,
            ) -> pgrx::datum::Internal {
                if bytes.is_empty() {
                    return pgrx::datum::Internal::default();
                }
                unsafe {
                    let ctx = $crate::types::agg_context(fcinfo, "merge_agg");
                    let v = $crate::types::from_bytes_trusted::<$core>(bytes);
                    let p = pgrx::PgMemoryContexts::For(ctx).leak_and_drop_on_delete(v);
                    pgrx::datum::Internal::from(Some(pgrx::pg_sys::Datum::from(p)))
                }
            }
        }
    };
}
pub(crate) use crdt_type;

/// Decode bytes this extension produced itself (aggregate serial states).
pub fn from_bytes_trusted<T: Crdt>(bytes: &[u8]) -> T {
    match converge_core::decode_trusted::<T>(bytes) {
        Ok(v) => v,
        Err(e) => raise(PgSqlErrorCode::ERRCODE_DATA_CORRUPTED, e.message),
    }
}

/// Mutators treat a NULL state as the empty value.
pub fn or_empty<T: Crdt>(v: Option<T>) -> T {
    // A mutator returns a state, also when it changes nothing.
    let mut v = v.unwrap_or_default();
    v.as_state();
    v
}
