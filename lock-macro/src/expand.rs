//! Code generation: checks the fn against the arguments, then rewrites its body.
//!
//! The signature, attributes, docs and visibility are re-emitted token for token; only the body
//! changes, becoming an `async move` block awaited in place between acquire and release. Keeping
//! the body an async block inside the same fn is what keeps `return`, `?`, `self`, generics and
//! lifetimes meaning what the user wrote (the approach of tracing-attributes).
//!
//! Generated locals use `Span::mixed_site()` *and* a `__distributed_lock_` prefix, so they can
//! neither capture nor shadow the user's names. Everything the generated code calls lives in
//! `<crate>::__private` (see the macro contract), so user code never names the inner crates.

use proc_macro2::{Literal, Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::visit_mut::VisitMut;
use syn::{AttrStyle, FnArg, Ident, ItemFn, Lifetime, Pat, ReturnType, Signature, Type};

use crate::args::{Args, DurationArg, OnBusy, OnLost};
use crate::key::Params;

/// What a skip-mode fn returns when the body does not run.
#[derive(Clone, Copy)]
enum SkipValue {
    /// `()`: no return type, or `-> ()`.
    Unit,
    /// `None`: `-> Option<T>`.
    None,
}

/// Checks the fn against the arguments and returns the rewritten fn, or every problem found.
pub(crate) fn expand(args: Args, item: ItemFn) -> syn::Result<TokenStream> {
    let params = params_of(&item.sig);
    let mut errors = Vec::new();
    if item.sig.asyncness.is_none() {
        errors.push(syn::Error::new(
            item.sig.fn_token.span,
            "`#[distributed_lock]` needs an `async fn`: the lock is held while the body awaits \
             and released when it completes; write `async fn`",
        ));
    }
    if let Some((lit, template)) = &args.key
        && let Err(message) = template.check(&params)
    {
        errors.push(syn::Error::new(lit.span(), message));
    }
    let on_busy = args.on_busy.map_or(OnBusy::Error, |(mode, _)| mode);
    let skip_value = match on_busy {
        OnBusy::Error => check_result_return(&item.sig, args.on_busy.is_some()).map(|()| None),
        OnBusy::Skip => check_skip_return(&item.sig).map(Some),
    };
    let skip_value = skip_value.unwrap_or_else(|error| {
        errors.push(error);
        None
    });
    if let Some(combined) = errors.into_iter().reduce(|mut all, next| {
        all.combine(next);
        all
    }) {
        return Err(combined);
    }
    Ok(generate(&args, item, &params, skip_value))
}

/// Every name the fn's parameters bind (through destructuring patterns too) and whether it has
/// a receiver: what a key placeholder may name.
fn params_of(sig: &Signature) -> Params {
    let mut names = Vec::new();
    let mut has_receiver = false;
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(_) => has_receiver = true,
            FnArg::Typed(typed) => bound_names(&typed.pat, &mut names),
        }
    }
    Params {
        names,
        has_receiver,
    }
}

/// Collects the identifiers a parameter pattern binds, in order.
fn bound_names(pat: &Pat, out: &mut Vec<Ident>) {
    match pat {
        Pat::Ident(binding) => {
            out.push(binding.ident.clone());
            if let Some((_, sub)) = &binding.subpat {
                bound_names(sub, out);
            }
        }
        Pat::Reference(reference) => bound_names(&reference.pat, out),
        Pat::Paren(paren) => bound_names(&paren.pat, out),
        Pat::Type(typed) => bound_names(&typed.pat, out),
        Pat::Tuple(tuple) => tuple.elems.iter().for_each(|pat| bound_names(pat, out)),
        Pat::TupleStruct(tuple) => tuple.elems.iter().for_each(|pat| bound_names(pat, out)),
        Pat::Slice(slice) => slice.elems.iter().for_each(|pat| bound_names(pat, out)),
        Pat::Struct(fields) => fields
            .fields
            .iter()
            .for_each(|field| bound_names(&field.pat, out)),
        _ => {}
    }
}

/// `on_busy = "error"` reports a busy lock as `Err(..)`, so the fn must return a `Result`.
/// Checked by the last path segment, so aliases such as `anyhow::Result<T>` and
/// `io::Result<T>` pass; whether the error type has `From<LockError>` is left to the compiler,
/// which reports it at the return type.
fn check_result_return(sig: &Signature, explicit: bool) -> syn::Result<()> {
    let mode = if explicit {
        "`on_busy = \"error\"`"
    } else {
        "`on_busy = \"error\"` (the default)"
    };
    let advice = |returned: &str| {
        format!(
            "{mode} reports a busy lock as `Err(LockError::NotAcquired)`, so the fn must return \
             `Result<T, E>` with `E: From<LockError>`, but it returns {returned}; return a \
             `Result`, or add `on_busy = \"skip\"` to skip the body when busy (for a fn \
             returning `()` or `Option<T>`)"
        )
    };
    match &sig.output {
        ReturnType::Default => Err(syn::Error::new(sig.ident.span(), advice("`()`"))),
        ReturnType::Type(_, ty) if last_segment_is(ty, "Result") => Ok(()),
        ReturnType::Type(_, ty) => Err(syn::Error::new(
            ty.span(),
            advice(&format!("`{}`", pretty(ty))),
        )),
    }
}

/// `on_busy = "skip"` returns without running the body, so the fn must return `()` or `Option<T>`.
fn check_skip_return(sig: &Signature) -> syn::Result<SkipValue> {
    let ty = match &sig.output {
        ReturnType::Default => return Ok(SkipValue::Unit),
        ReturnType::Type(_, ty) => ty,
    };
    match strip_parens(ty) {
        Type::Tuple(tuple) if tuple.elems.is_empty() => return Ok(SkipValue::Unit),
        _ if last_segment_is(ty, "Option") => return Ok(SkipValue::None),
        _ => {}
    }
    let hint = if last_segment_is(ty, "Result") {
        "drop `on_busy = \"skip\"` to get `Err(LockError::NotAcquired)` from this `Result` fn \
         instead"
            .to_string()
    } else {
        format!(
            "return `Option<{}>` (`None` when skipped), or use `on_busy = \"error\"` with a \
             `Result`",
            pretty(ty)
        )
    };
    Err(syn::Error::new(
        ty.span(),
        format!(
            "`on_busy = \"skip\"` returns without running the body when the lock is busy, so \
             the fn must return `()` or `Option<T>`, but it returns `{}`; {hint}",
            pretty(ty)
        ),
    ))
}

/// Whether `ty` is a path type whose last segment is `name` (`Result`, `io::Result<T>`, ...).
fn last_segment_is(ty: &Type, name: &str) -> bool {
    match strip_parens(ty) {
        Type::Path(path) => path
            .path
            .segments
            .last()
            .is_some_and(|segment| segment.ident == name),
        _ => false,
    }
}

/// Looks through `(T)` and invisible groups (types passed in from `macro_rules!`).
fn strip_parens(ty: &Type) -> &Type {
    match ty {
        Type::Paren(inner) => strip_parens(&inner.elem),
        Type::Group(inner) => strip_parens(&inner.elem),
        other => other,
    }
}

/// A type as a user would write it, for messages (`Result<u32, E>`, not `Result < u32 , E >`).
fn pretty(ty: &Type) -> String {
    ty.to_token_stream()
        .to_string()
        .replace(" :: ", "::")
        .replace(":: ", "::")
        .replace(" < ", "<")
        .replace("< ", "<")
        .replace(" >", ">")
        .replace(" ,", ",")
        .replace("& ", "&")
        .replace("( ", "(")
        .replace(" )", ")")
}

/// The rewritten fn. `skip_value` is `Some` exactly in skip mode.
fn generate(
    args: &Args,
    item: ItemFn,
    params: &Params,
    skip_value: Option<SkipValue>,
) -> TokenStream {
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = item;
    let (inner_attrs, outer_attrs): (Vec<_>, Vec<_>) = attrs
        .into_iter()
        .partition(|attr| matches!(attr.style, AttrStyle::Inner(_)));

    let private = match &args.krate {
        Some(path) => quote!(#path::__private),
        None => {
            let facade = crate::facade::path();
            quote!(#facade::__private)
        }
    };
    let hygienic = |name: &str| Ident::new(name, Span::mixed_site());
    let key_var = hygienic("__distributed_lock_key");
    let guard = hygienic("__distributed_lock_guard");
    let out = hygienic("__distributed_lock_out");
    let error = hygienic("__distributed_lock_error");

    let key = match &args.key {
        Some((lit, template)) => template.to_tokens(params, lit.span()),
        // Unreachable: `Args::parse` refuses a missing key. Kept total rather than panicking.
        None => quote!(::std::string::String::new()),
    };
    let locker = match &args.locker {
        Some(expr) => quote_spanned! {expr.span()=>
            ::core::option::Option::Some(
                ::core::convert::AsRef::<#private::Locker>::as_ref(&(#expr))
            )
        },
        None => quote!(::core::option::Option::None),
    };
    let (durations, options) = options_tokens(args, &private);
    let body = body_tokens(&sig, &block);
    let cancel = matches!(args.on_lost, Some((OnLost::Cancel, _)));

    let acquire_and_run = match skip_value {
        None => {
            let scope = if cancel {
                quote! {
                    let #out = #private::scope_cancel_on_lost(&#guard, #body).await;
                    match (#out, #private::finish(#guard).await) {
                        (::core::result::Result::Ok(#out), ::core::result::Result::Ok(())) => {
                            return #out;
                        }
                        (_, ::core::result::Result::Err(#error))
                        | (::core::result::Result::Err(#error), _) => #error,
                    }
                }
            } else {
                quote! {
                    let #out = #private::scope(&#guard, #body).await;
                    match #private::finish(#guard).await {
                        ::core::result::Result::Ok(()) => return #out,
                        ::core::result::Result::Err(#error) => #error,
                    }
                }
            };
            // One conversion point for both failures (busy, lease lost), located at the error
            // type: a missing `From<LockError>` is reported there, once. Every token shares one
            // hygiene context, or rustc would move the report to the attribute.
            let at_error = Span::mixed_site().located_at(error_type_span(&sig));
            let error_here = Ident::new("__distributed_lock_error", at_error);
            let converted = Ident::new("__distributed_lock_converted", at_error);
            // `useless_conversion`: when `E` is `LockError` itself, `From::from` is the identity,
            // and clippy would blame the user's return type for it.
            let convert = quote_spanned! {at_error=>
                #[allow(clippy::useless_conversion)]
                let #converted = ::core::convert::From::from(#error_here);
                ::core::result::Result::Err(#converted)
            };
            let label = Lifetime::new("'__distributed_lock", Span::mixed_site());
            quote! {
                let #error: #private::LockError = #label: {
                    let #guard = match #private::acquire(#locker, #key_var, #options).await {
                        ::core::result::Result::Ok(#guard) => #guard,
                        ::core::result::Result::Err(#error) => break #label #error,
                    };
                    #scope
                };
                #convert
            }
        }
        Some(skip_value) => {
            let skipped = match skip_value {
                SkipValue::Unit => quote!(()),
                SkipValue::None => quote!(::core::option::Option::None),
            };
            let run = if cancel {
                quote! {
                    let #out = #private::scope_cancel_on_lost(&#guard, #body).await;
                    #private::finish_skip(#guard).await;
                    match #out {
                        ::core::result::Result::Ok(#out) => #out,
                        ::core::result::Result::Err(_) => #skipped,
                    }
                }
            } else {
                quote! {
                    #[allow(clippy::let_unit_value)]
                    let #out = #private::scope(&#guard, #body).await;
                    #private::finish_skip(#guard).await;
                    #out
                }
            };
            quote! {
                let #guard = match #private::acquire_or_skip(#locker, #key_var, #options).await {
                    ::core::option::Option::Some(#guard) => #guard,
                    ::core::option::Option::None => return #skipped,
                };
                #run
            }
        }
    };

    quote! {
        #(#outer_attrs)*
        #vis #sig {
            #(#inner_attrs)*
            let #key_var: ::std::string::String = #key;
            #durations
            #acquire_and_run
        }
    }
}

/// Where to report a missing `From<LockError>`: at `E` in `Result<T, E>`, else (an alias such
/// as `io::Result<T>`) at the return type, else at the fn's name.
fn error_type_span(sig: &Signature) -> Span {
    let ReturnType::Type(_, ty) = &sig.output else {
        return sig.ident.span();
    };
    if let Type::Path(path) = strip_parens(ty)
        && let Some(segment) = path.path.segments.last()
        && let syn::PathArguments::AngleBracketed(generics) = &segment.arguments
        && let [_, syn::GenericArgument::Type(error)] =
            generics.args.iter().collect::<Vec<_>>().as_slice()
    {
        return error.span();
    }
    ty.span()
}

/// `LockOptions::new()` plus one builder call per duration given (defaults stay the runtime's),
/// and the `let` statements that evaluate duration expressions before it.
fn options_tokens(args: &Args, private: &TokenStream) -> (TokenStream, TokenStream) {
    let mut bindings = TokenStream::new();
    let mut options = quote!(#private::LockOptions::new());
    let settings = [
        ("wait", &args.wait),
        ("lease", &args.lease),
        ("hold_at_least", &args.hold_at_least),
    ];
    for (setter, value) in settings {
        let Some(value) = value else { continue };
        let setter = Ident::new(setter, Span::call_site());
        let duration = match value {
            DurationArg::Literal { millis, lit } => {
                let millis = Literal::u64_suffixed(*millis);
                quote_spanned!(lit.span()=> #private::Duration::from_millis(#millis))
            }
            // A typed binding rather than the bare argument, so a wrong type is reported as
            // "expected `Duration`" at the user's expression, not against the runtime's setter.
            DurationArg::Expr(expr) => {
                let value = Ident::new(&format!("__distributed_lock_{setter}"), Span::mixed_site());
                bindings.extend(quote_spanned! {expr.span()=>
                    let #value: #private::Duration = #expr;
                });
                value.to_token_stream()
            }
        };
        options.extend(quote!(.#setter(#duration)));
    }
    (bindings, options)
}

/// The user's body as an `async move` block, preceded by tracing-attributes' "fake return":
/// an unreachable `return` of the declared type, spanned at that type, so the block's output
/// type is known up front (`?` inside it converts into the right error) and a mismatch is
/// reported against the user's signature rather than inside generated code.
fn body_tokens(sig: &Signature, block: &syn::Block) -> TokenStream {
    let (return_type, return_span) = match &sig.output {
        ReturnType::Type(_, ty) => {
            let mut ty = (**ty).clone();
            EraseImplTrait.visit_type_mut(&mut ty);
            (ty.to_token_stream(), ty.span())
        }
        ReturnType::Default => (quote!(()), sig.ident.span()),
    };
    let fake_return = Ident::new(
        "__distributed_lock_fake_return",
        Span::mixed_site().located_at(return_span),
    );
    quote_spanned! {return_span=>
        async move {
            #[allow(
                unknown_lints,
                unreachable_code,
                clippy::diverging_sub_expression,
                clippy::empty_loop,
                clippy::let_unit_value,
                clippy::let_with_type_underscore,
                clippy::needless_return,
                clippy::unreachable
            )]
            if false {
                let #fake_return: #return_type = loop {};
                return #fake_return;
            }
            #block
        }
    }
}

/// Replaces `impl Trait` with `_` in a return type: `let x: impl Trait` is not allowed, and the
/// fake return only needs the shape around it.
struct EraseImplTrait;

impl VisitMut for EraseImplTrait {
    fn visit_type_mut(&mut self, ty: &mut Type) {
        if let Type::ImplTrait(impl_trait) = ty {
            *ty = Type::Infer(syn::TypeInfer {
                underscore_token: syn::Token![_](impl_trait.span()),
            });
        } else {
            syn::visit_mut::visit_type_mut(self, ty);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::expand;
    use crate::args::Args;
    use quote::quote;

    fn expand_str(
        attr: proc_macro2::TokenStream,
        item: proc_macro2::TokenStream,
    ) -> syn::Result<String> {
        let args: Args = syn::parse2(attr)?;
        let item: syn::ItemFn = syn::parse2(item)?;
        expand(args, item).map(|tokens| tokens.to_string())
    }

    #[test]
    fn error_mode_keeps_the_signature_and_wraps_the_body() {
        let expanded = expand_str(
            quote!(key = "book:{isbn}", wait = "10s", lease = "5s"),
            quote! {
                /// Docs stay.
                pub async fn register(&self, isbn: &str) -> Result<Book, AppError> { body() }
            },
        )
        .unwrap();
        let item: syn::ItemFn = syn::parse_str(&expanded).unwrap();
        assert_eq!(item.sig.ident, "register");
        assert_eq!(item.attrs.len(), 1);
        for expected in [
            ":: std :: format ! (\"book:{}\" , isbn)",
            ":: distlock :: __private :: acquire (",
            ". wait (:: distlock :: __private :: Duration :: from_millis (10000u64))",
            ". lease (:: distlock :: __private :: Duration :: from_millis (5000u64))",
            ":: distlock :: __private :: scope (",
            "async move",
            ":: distlock :: __private :: finish (",
            ":: core :: convert :: From :: from",
        ] {
            assert!(
                expanded.contains(expected),
                "{expected} missing in {expanded}"
            );
        }
    }

    #[test]
    fn skip_mode_uses_the_skip_entry_points() {
        let expanded = expand_str(
            quote!(
                key = "nightly",
                on_busy = "skip",
                on_lost = "cancel",
                crate = "my::lock"
            ),
            quote!(
                async fn nightly() -> Option<u8> {
                    Some(1)
                }
            ),
        )
        .unwrap();
        syn::parse_str::<syn::ItemFn>(&expanded).unwrap();
        assert!(expanded.contains("my :: lock :: __private :: acquire_or_skip ("));
        assert!(expanded.contains("my :: lock :: __private :: scope_cancel_on_lost ("));
        assert!(expanded.contains("my :: lock :: __private :: finish_skip ("));
        assert!(expanded.contains(":: core :: option :: Option :: None"));
    }

    #[test]
    fn every_problem_with_the_fn_is_reported_at_once() {
        let error = expand_str(
            quote!(key = "{missing}"),
            quote!(
                fn not_async(id: u32) -> u32 {
                    id
                }
            ),
        )
        .unwrap_err();
        let messages: Vec<String> = error.into_iter().map(|e| e.to_string()).collect();
        assert_eq!(messages.len(), 3, "{messages:?}");
        assert!(messages[0].contains("needs an `async fn`"));
        assert!(messages[1].contains("`{missing}` in `key` names no parameter"));
        assert!(messages[2].contains("must return `Result<T, E>`"));
    }

    #[test]
    fn result_aliases_pass_and_other_types_do_not() {
        for ty in [
            quote!(Result<(), E>),
            quote!(anyhow::Result<u8>),
            quote!(std::io::Result<u8>),
        ] {
            assert!(
                expand_str(quote!(key = "k"), quote!(async fn f() -> #ty { todo!() })).is_ok(),
                "{ty}"
            );
        }
        for ty in [
            quote!(u8),
            quote!(Option<u8>),
            quote!(impl Future<Output = ()>),
        ] {
            assert!(
                expand_str(quote!(key = "k"), quote!(async fn f() -> #ty { todo!() })).is_err(),
                "{ty}"
            );
        }
    }

    #[test]
    fn skip_mode_accepts_unit_and_option_only() {
        for ty in [
            quote!(),
            quote!(-> ()),
            quote!(-> Option<u8>),
            quote!(-> core::option::Option<u8>),
        ] {
            assert!(
                expand_str(
                    quote!(key = "k", on_busy = "skip"),
                    quote!(async fn f() #ty { todo!() })
                )
                .is_ok(),
                "{ty}"
            );
        }
        for ty in [quote!(-> Result<(), E>), quote!(-> u8), quote!(-> (u8, u8))] {
            assert!(
                expand_str(
                    quote!(key = "k", on_busy = "skip"),
                    quote!(async fn f() #ty { todo!() })
                )
                .is_err(),
                "{ty}"
            );
        }
    }
}
