//! Code generation: checks the fn against the arguments, then rewrites its body.
//!
//! The signature, attributes, docs and visibility are re-emitted token for token; only the body
//! changes, becoming an `async move` block that `__private::run` awaits between acquire and
//! release. Keeping the body an async block inside the same fn is what keeps `return`, `?`,
//! `self`, generics and lifetimes meaning what the user wrote (the approach of
//! tracing-attributes). A fn already rewritten by `#[async_trait]` (not `async`, its body
//! `Box::pin(async move { .. })`) gets the same treatment inside its async block, as
//! tracing-attributes does it.
//!
//! Which return types fit a mode is left to the type system: the generated code converts the
//! outcome with `__private::ErrorReturn` or `__private::SkipReturn`, whose
//! `#[diagnostic::on_unimplemented]` messages explain a misfit, so an alias of `Result` works like
//! `Result` itself.
//!
//! Generated locals use `Span::mixed_site()` *and* a `__distributed_lock_` prefix, so they can
//! neither capture nor shadow the user's names. Everything the generated code calls lives in
//! `<crate>::__private` (see the macro contract), so user code never names the inner crates.

use proc_macro2::{Group, Span, TokenStream, TokenTree};
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::visit_mut::VisitMut;
use syn::{AttrStyle, Expr, FnArg, Ident, ItemFn, Pat, ReturnType, Signature, Stmt, Type};

use crate::args::{Args, DurationArg, OnBusy, OnLost};
use crate::key::Params;

/// Checks the fn against the arguments and returns the rewritten fn, or every problem found.
pub(crate) fn expand(args: Args, item: ItemFn) -> syn::Result<TokenStream> {
    let params = params_of(&item.sig);
    let mut errors = Vec::new();
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = item;
    let shape = Shape::of(&sig, *block);
    if shape.is_none() {
        errors.push(syn::Error::new(
            sig.fn_token.span,
            "`#[distributed_lock]` needs an `async fn`: the lock is held while the body awaits \
             and released when it completes; write `async fn`",
        ));
    }
    if let Some((lit, template)) = &args.key
        && let Err(message) = template.check(&params)
    {
        errors.push(syn::Error::new(lit.span(), message));
    }
    match (
        shape,
        errors.into_iter().reduce(|mut all, next| {
            all.combine(next);
            all
        }),
    ) {
        (Some(shape), None) => Ok(generate(&args, attrs, vis, sig, shape, &params)),
        (_, Some(errors)) => Err(errors),
        // `shape` is `None` only with an error pushed above.
        (None, None) => Err(syn::Error::new(sig.fn_token.span, "expected an `async fn`")),
    }
}

/// Where the body to lock is, and the type it produces.
enum Shape {
    /// An `async fn`: its statements produce the declared return type.
    AsyncFn(Vec<Stmt>),
    /// A fn whose value is `Box::pin(async move { .. })` (what `#[async_trait]` makes of an
    /// `async fn`) or a bare `async move { .. }`: the async block's statements are the body.
    Deferred(Box<Deferred>),
}

/// The parts of a fn that returns an async block.
struct Deferred {
    /// The fn's statements before the one holding the async block.
    before: Vec<Stmt>,
    /// `Box::pin(..)` around the async block, when there is one.
    pin: Option<PinCall>,
    /// The async block.
    block: syn::ExprAsync,
    /// The fn's statements after it (items).
    after: Vec<Stmt>,
    /// The future's `Output` type, when the return type says it (`Pin<Box<dyn
    /// Future<Output = T> + Send>>`, `impl Future<Output = T>`).
    output: Option<Type>,
}

/// `Box::pin( .. )` around an async block, kept as written.
struct PinCall {
    attrs: Vec<syn::Attribute>,
    func: Expr,
    paren: syn::token::Paren,
}

impl Shape {
    /// The shape of a fn with this signature and block, or `None` when it is neither an
    /// `async fn` nor returns an async block.
    fn of(sig: &Signature, block: syn::Block) -> Option<Self> {
        let mut stmts = block.stmts;
        if sig.asyncness.is_some() {
            return Some(Shape::AsyncFn(stmts));
        }
        // As tracing-attributes does: the last expression statement decides the fn's value.
        let index = stmts
            .iter()
            .rposition(|stmt| matches!(stmt, Stmt::Expr(_, None)))?;
        let after = stmts.split_off(index + 1);
        let Some(Stmt::Expr(expr, None)) = stmts.pop() else {
            return None;
        };
        let (pin, block) = match expr {
            Expr::Async(block) => (None, block),
            Expr::Call(call) if is_box_pin(&call.func) && call.args.len() == 1 => {
                let syn::ExprCall {
                    attrs,
                    func,
                    paren_token,
                    args,
                } = call;
                let Some(Expr::Async(block)) = args.into_iter().next() else {
                    return None;
                };
                let pin = PinCall {
                    attrs,
                    func: *func,
                    paren: paren_token,
                };
                (Some(pin), block)
            }
            _ => return None,
        };
        let output = match &sig.output {
            ReturnType::Type(_, ty) => future_output(ty).cloned(),
            ReturnType::Default => None,
        };
        Some(Shape::Deferred(Box::new(Deferred {
            before: stmts,
            pin,
            block,
            after,
            output,
        })))
    }
}

/// `Box::pin`, `::std::boxed::Box::pin`, ...
fn is_box_pin(func: &Expr) -> bool {
    let Expr::Path(path) = func else {
        return false;
    };
    let mut segments = path.path.segments.iter().rev();
    matches!(
        (segments.next(), segments.next()),
        (Some(pin), Some(boxed)) if pin.ident == "pin" && boxed.ident == "Box"
    )
}

/// The `T` of the first `Future<Output = T>` bound in `ty`, looking through `Pin<Box<..>>`.
fn future_output(ty: &Type) -> Option<&Type> {
    let bounds = match strip_parens(ty) {
        Type::Path(path) => {
            let segment = path.path.segments.last()?;
            let syn::PathArguments::AngleBracketed(generics) = &segment.arguments else {
                return None;
            };
            return generics.args.iter().find_map(|arg| match arg {
                syn::GenericArgument::Type(inner) => future_output(inner),
                _ => None,
            });
        }
        Type::TraitObject(object) => &object.bounds,
        Type::ImplTrait(impl_trait) => &impl_trait.bounds,
        _ => return None,
    };
    bounds.iter().find_map(|bound| {
        let syn::TypeParamBound::Trait(bound) = bound else {
            return None;
        };
        let segment = bound.path.segments.last()?;
        let syn::PathArguments::AngleBracketed(generics) = &segment.arguments else {
            return None;
        };
        if segment.ident != "Future" {
            return None;
        }
        generics.args.iter().find_map(|arg| match arg {
            syn::GenericArgument::AssocType(assoc) if assoc.ident == "Output" => Some(&assoc.ty),
            _ => None,
        })
    })
}

/// Every name the fn's parameters bind (through destructuring patterns too) and its receiver:
/// what a key placeholder may name.
fn params_of(sig: &Signature) -> Params {
    let mut names = Vec::new();
    let mut receiver = None;
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(own) => receiver = Some(own.self_token.span),
            FnArg::Typed(typed) => bound_names(&typed.pat, &mut names),
        }
    }
    Params { names, receiver }
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

/// Looks through `(T)` and invisible groups (types passed in from `macro_rules!`).
fn strip_parens(ty: &Type) -> &Type {
    match ty {
        Type::Paren(inner) => strip_parens(&inner.elem),
        Type::Group(inner) => strip_parens(&inner.elem),
        other => other,
    }
}

/// The rewritten fn.
fn generate(
    args: &Args,
    attrs: Vec<syn::Attribute>,
    vis: syn::Visibility,
    sig: Signature,
    shape: Shape,
    params: &Params,
) -> TokenStream {
    let (inner_attrs, outer_attrs): (Vec<_>, Vec<_>) = attrs
        .into_iter()
        .partition(|attr| matches!(attr.style, AttrStyle::Inner(_)));

    let fn_body = match shape {
        Shape::AsyncFn(stmts) => {
            let (output, output_span): (Type, Span) = match &sig.output {
                ReturnType::Type(_, ty) => ((**ty).clone(), ty.span()),
                ReturnType::Default => (
                    syn::parse_quote_spanned!(sig.ident.span()=> ()),
                    sig.ident.span(),
                ),
            };
            locked_tokens(args, params, Some(&output), output_span, &stmts, None)
        }
        Shape::Deferred(deferred) => {
            let Deferred {
                before,
                pin,
                block,
                after,
                output,
            } = *deferred;
            let output_span = match (&output, &sig.output) {
                (Some(output), _) => output.span(),
                (None, ReturnType::Type(_, ty)) => ty.span(),
                (None, ReturnType::Default) => sig.ident.span(),
            };
            let syn::ExprAsync {
                attrs: async_attrs,
                capture,
                block,
                ..
            } = block;
            let stmts = allow_unused_rebindings(block.stmts, args);
            let locked = locked_tokens(
                args,
                params,
                output.as_ref(),
                output_span,
                &stmts,
                Some(&capture),
            );
            let mut future = Group::new(proc_macro2::Delimiter::Brace, locked);
            future.set_span(block.brace_token.span.join());
            let future = quote!(#(#async_attrs)* async #capture #future);
            let value = match pin {
                Some(PinCall { attrs, func, paren }) => {
                    let mut argument = Group::new(proc_macro2::Delimiter::Parenthesis, future);
                    argument.set_span(paren.span.join());
                    quote!(#(#attrs)* #func #argument)
                }
                None => future,
            };
            quote!(#(#before)* #value #(#after)*)
        }
    };

    quote! {
        #(#outer_attrs)*
        #vis #sig {
            #(#inner_attrs)*
            #fn_body
        }
    }
}

/// `#[async_trait]` moves each parameter into its future with `let id = id;`. A parameter that
/// only the key uses is used before that, outside the future, so rustc would report the
/// rebinding as an unused variable at the user's parameter: allow it on exactly those `let`s.
fn allow_unused_rebindings(mut stmts: Vec<Stmt>, args: &Args) -> Vec<Stmt> {
    let Some((_, template)) = &args.key else {
        return stmts;
    };
    let roots: Vec<&str> = template.roots().collect();
    for stmt in &mut stmts {
        let Stmt::Local(local) = stmt else { continue };
        let (Pat::Ident(binding), Some(init)) = (&local.pat, &local.init) else {
            continue;
        };
        let rebinds_itself = matches!(
            &*init.expr,
            Expr::Path(path) if path.qself.is_none() && path.path.is_ident(&binding.ident)
        );
        if rebinds_itself && roots.iter().any(|root| binding.ident == root) {
            local
                .attrs
                .push(syn::parse_quote!(#[allow(unused_variables)]));
        }
    }
    stmts
}

/// The statements that compute the key, acquire, run `body` (the user's statements), release,
/// and produce the fn's value. `output` is the type the body produces, `output_span` where to
/// report a return type that does not fit the mode.
fn locked_tokens(
    args: &Args,
    params: &Params,
    output: Option<&Type>,
    output_span: Span,
    body: &[Stmt],
    capture: Option<&Option<syn::Token![move]>>,
) -> TokenStream {
    let hygienic = |name: &str| Ident::new(name, Span::mixed_site());
    let key_var = hygienic("__distributed_lock_key");
    let out = hygienic("__distributed_lock_out");
    let error = hygienic("__distributed_lock_error");

    let private = private_path(args);
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
    let on_lost = match args.on_lost {
        Some((OnLost::Cancel, _)) => quote!(#private::OnLost::Cancel),
        _ => quote!(#private::OnLost::Report),
    };
    let move_token = match capture {
        Some(capture) => capture.to_token_stream(),
        None => quote!(move),
    };
    let body = body_tokens(output, output_span, body, &move_token);

    // The conversions into the return type are where a return type that does not fit the mode
    // is reported, so they are located at it (a missing `From<LockError>` at the `E` of
    // `Result<T, E>`). Every token of them shares one span and hygiene context: rustc reports an
    // obligation at the whole expression, and would move it to the attribute otherwise.
    let mode = args.on_busy.map_or(OnBusy::Error, |(mode, _)| mode);
    let at_return = Span::mixed_site().located_at(output_span);
    let at_error =
        Span::mixed_site().located_at(error_type_span(output, mode).unwrap_or(output_span));
    let private_at_return = respan(private.clone(), at_return);
    let private_at_error = respan(private.clone(), at_error);
    let error_at = Ident::new("__distributed_lock_error", at_error);
    let converted = Ident::new("__distributed_lock_converted", at_error);
    // `useless_conversion`: when the target is `LockError` itself, `From::from` is the identity,
    // and clippy would blame the user's return type for it.
    let convert = quote_spanned! {at_error=>
        #[allow(clippy::useless_conversion)]
        let #converted = ::core::convert::From::from(#error_at);
    };

    let outcome = match mode {
        OnBusy::Error => quote! {
            match #private::run(#locker, #key_var, #options, #on_lost, #body).await {
                ::core::result::Result::Ok(#out) => #out,
                ::core::result::Result::Err(#error) => {
                    #convert
                    #private_at_error::ErrorReturn::from_error(#converted)
                }
            }
        },
        OnBusy::Skip => {
            let output_var = hygienic("__distributed_lock_output");
            let failed_key = hygienic("__distributed_lock_failed_key");
            let busy = quote_spanned!(at_return=> #private_at_return::SkipReturn::busy());
            let output_at = Ident::new("__distributed_lock_output", at_error);
            let failed_key_at = Ident::new("__distributed_lock_failed_key", at_error);
            let failed = quote_spanned! {at_error=>
                #private_at_error::SkipReturn::failed(#converted, #output_at, &#failed_key_at)
            };
            quote! {
                match #private::run_or_skip(#locker, #key_var, #options, #on_lost, #body).await {
                    #private::Skip::Ran(#out) => #out,
                    #private::Skip::Busy => #busy,
                    #private::Skip::Failed {
                        error: #error,
                        output: #output_var,
                        key: #failed_key,
                    } => {
                        #convert
                        #failed
                    }
                }
            }
        }
    };

    quote! {
        let #key_var: ::std::string::String = #key;
        #durations
        #outcome
    }
}

/// `<crate>::__private`: the `crate = ".."` argument's path, or the facade's.
fn private_path(args: &Args) -> TokenStream {
    match &args.krate {
        Some(path) => quote!(#path::__private),
        None => {
            let facade = crate::facade::path();
            quote!(#facade::__private)
        }
    }
}

/// `tokens` with every token (in groups too) at `span`.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|token| match token {
            TokenTree::Group(group) => {
                let mut respanned = Group::new(group.delimiter(), respan(group.stream(), span));
                respanned.set_span(span);
                TokenTree::Group(respanned)
            }
            mut other => {
                other.set_span(span);
                other
            }
        })
        .collect()
}

/// Where to report a missing `From<LockError>`: at `E` when the return type is written as
/// `Result<T, E>` and fits the mode otherwise (for skip mode: `T` is `()` or `Option<..>`);
/// `None` (the whole type) when it is an alias or does not fit, so that every complaint about it
/// lands on one span and is reported once.
fn error_type_span(output: Option<&Type>, mode: OnBusy) -> Option<Span> {
    let Type::Path(path) = strip_parens(output?) else {
        return None;
    };
    let segment = path.path.segments.last()?;
    let syn::PathArguments::AngleBracketed(generics) = &segment.arguments else {
        return None;
    };
    let [
        syn::GenericArgument::Type(ok),
        syn::GenericArgument::Type(error),
    ] = generics.args.iter().collect::<Vec<_>>().as_slice()
    else {
        return None;
    };
    if segment.ident != "Result" {
        return None;
    }
    let fits = match mode {
        OnBusy::Error => true,
        OnBusy::Skip => match strip_parens(ok) {
            Type::Tuple(unit) => unit.elems.is_empty(),
            Type::Path(ok) => ok
                .path
                .segments
                .last()
                .is_some_and(|segment| segment.ident == "Option"),
            _ => false,
        },
    };
    fits.then(|| error.span())
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
                let millis = proc_macro2::Literal::u64_suffixed(*millis);
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

/// The user's statements as an `async move` block, preceded by tracing-attributes' "fake
/// return": an unreachable `return` of the declared type, spanned at that type, so the block's
/// output type is known up front (`?` inside it converts into the right error) and a mismatch is
/// reported against the user's signature rather than inside generated code.
///
/// The statements are spliced in, not the block with its braces: `async move { ..; { Ok(()) } }`
/// would trip `unused_braces` at the user's braces, and `cargo fix` would then delete the fn's
/// own braces.
fn body_tokens(
    output: Option<&Type>,
    output_span: Span,
    stmts: &[Stmt],
    capture: &TokenStream,
) -> TokenStream {
    let Some(output) = output else {
        return quote_spanned!(output_span=> async #capture { #(#stmts)* });
    };
    let mut output = output.clone();
    EraseImplTrait.visit_type_mut(&mut output);
    let fake_return = Ident::new(
        "__distributed_lock_fake_return",
        Span::mixed_site().located_at(output_span),
    );
    quote_spanned! {output_span=>
        async #capture {
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
                let #fake_return: #output = loop {};
                return #fake_return;
            }
            #(#stmts)*
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

    fn assert_contains(expanded: &str, expected: &[&str]) {
        for expected in expected {
            assert!(
                expanded.contains(expected),
                "{expected} missing in {expanded}"
            );
        }
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
        assert_contains(
            &expanded,
            &[
                ":: std :: format ! (\"book:{}\" , isbn)",
                ":: distlock :: __private :: run (",
                ". wait (:: distlock :: __private :: Duration :: from_millis (10000u64))",
                ". lease (:: distlock :: __private :: Duration :: from_millis (5000u64))",
                ":: distlock :: __private :: OnLost :: Report",
                "async move",
                ":: core :: convert :: From :: from",
                ":: distlock :: __private :: ErrorReturn :: from_error (",
            ],
        );
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
        assert_contains(
            &expanded,
            &[
                "my :: lock :: __private :: run_or_skip (",
                "my :: lock :: __private :: OnLost :: Cancel",
                "my :: lock :: __private :: SkipReturn :: busy ()",
                "my :: lock :: __private :: SkipReturn :: failed (",
            ],
        );
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
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(messages[0].contains("needs an `async fn`"));
        assert!(messages[1].contains("`{missing}` in `key` names no parameter"));
    }

    #[test]
    fn return_types_are_left_to_the_type_system() {
        // Aliases, and types that do not fit: the compiler decides through the `__private`
        // traits, so the macro accepts every spelling.
        for ty in [
            quote!(-> AppResult<u8>),
            quote!(-> std::io::Result<u8>),
            quote!(-> u8),
            quote!(),
        ] {
            for mode in [quote!(on_busy = "error"), quote!(on_busy = "skip")] {
                assert!(
                    expand_str(
                        quote!(key = "k", #mode),
                        quote!(async fn f() #ty { todo!() })
                    )
                    .is_ok(),
                    "{ty} {mode}"
                );
            }
        }
    }

    #[test]
    fn the_body_is_spliced_without_its_braces() {
        // `async move { ..; { Ok(()) } }` would trip `unused_braces` at the user's braces.
        let expanded = expand_str(
            quote!(key = "k"),
            quote!(
                async fn f() -> Result<(), E> {
                    Ok(())
                }
            ),
        )
        .unwrap();
        assert!(!expanded.contains("{ Ok (()) }"), "{expanded}");
        assert!(expanded.contains("Ok (())"), "{expanded}");
    }

    #[test]
    fn an_async_trait_method_is_locked_inside_its_pinned_future() {
        // What `#[async_trait]` makes of `async fn run(&self, day: u32) -> Result<u8, E>`.
        let expanded = expand_str(
            quote!(key = "job:{day}"),
            quote! {
                fn run<'life0, 'async_trait>(
                    &'life0 self,
                    day: u32,
                ) -> ::core::pin::Pin<Box<
                    dyn ::core::future::Future<Output = Result<u8, E>> + ::core::marker::Send + 'async_trait,
                >>
                where
                    'life0: 'async_trait,
                    Self: 'async_trait,
                {
                    Box::pin(async move {
                        let __self = self;
                        let __ret: Result<u8, E> = { Ok(1) };
                        __ret
                    })
                }
            },
        )
        .unwrap();
        let item: syn::ItemFn = syn::parse_str(&expanded).unwrap();
        assert!(item.sig.asyncness.is_none());
        // Still `Box::pin(async move { .. })` as its last statement, so `#[tracing::instrument]`
        // applied after this attribute recognises it too.
        let Some(syn::Stmt::Expr(syn::Expr::Call(call), None)) = item.block.stmts.last() else {
            panic!("not a call: {expanded}");
        };
        assert!(matches!(call.args.first(), Some(syn::Expr::Async(_))));
        assert_contains(
            &expanded,
            &[
                "Box :: pin (async move {",
                ":: std :: format ! (\"job:{}\" , day)",
                ":: distlock :: __private :: run (",
                "let __distributed_lock_fake_return : Result < u8 , E > = loop { }",
                "let __self = self ;",
            ],
        );
    }

    #[test]
    fn a_fn_returning_an_async_block_is_locked_inside_it() {
        let expanded = expand_str(
            quote!(key = "k"),
            quote! {
                fn f() -> impl ::core::future::Future<Output = Option<u8>> + Send {
                    let x = 1;
                    async move { Some(x) }
                }
            },
        )
        .unwrap();
        assert_contains(
            &expanded,
            &[
                "let x = 1 ; async move {",
                "let __distributed_lock_fake_return : Option < u8 > = loop { }",
            ],
        );
    }

    #[test]
    fn a_fn_that_returns_no_future_is_refused() {
        for body in [
            quote!({ 1 }),
            quote!({ Box::pin(ready()) }),
            quote!({ Box::new(async move { 1 }) }),
            quote!({
                Box::pin(async move { 1 });
            }),
        ] {
            let error = expand_str(quote!(key = "k"), quote!(fn f() -> X #body)).unwrap_err();
            assert!(error.to_string().contains("needs an `async fn`"), "{body}");
        }
    }
}
