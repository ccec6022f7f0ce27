//! Where the generated code finds the `distlock` facade: under the name the calling crate's
//! `Cargo.toml` gives it, so that `lock = { package = "distlock", ... }` works too.

use proc_macro_crate::{FoundCrate, crate_name};
use proc_macro2::{Ident, TokenStream};
use quote::quote;

/// The path of the facade as seen from the crate being compiled.
pub(crate) fn path() -> TokenStream {
    match crate_name("distlock") {
        Ok(FoundCrate::Name(name)) => match syn::parse_str::<Ident>(&name) {
            Ok(name) => quote!(::#name),
            Err(_) => quote!(::distlock),
        },
        // The package being compiled is the facade's own: its examples, bins and doc tests, where
        // `crate` would be the example, not the library, and `::distlock` names the library.
        Ok(FoundCrate::Itself) => quote!(::distlock),
        // Not a direct dependency (reached through a crate that re-exports it, which should pass
        // `crate = "..."`), or not built by cargo: the usual name is the best guess, and a wrong
        // guess is a compile error at the attribute.
        Err(_) => quote!(::distlock),
    }
}
