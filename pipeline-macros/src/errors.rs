//! Collects independent errors so that one build reports them all (STYLE 6).

/// Errors found so far; [`Errors::finish`] turns them into one `syn::Error`.
#[derive(Default)]
pub struct Errors {
    first: Option<syn::Error>,
}

impl Errors {
    /// Records an error and goes on.
    pub fn push(&mut self, error: syn::Error) {
        match &mut self.first {
            Some(first) => first.combine(error),
            None => self.first = Some(error),
        }
    }

    /// Records the error of `result`, if any, and returns its value.
    pub fn take<T>(&mut self, result: syn::Result<T>) -> Option<T> {
        result.map_err(|error| self.push(error)).ok()
    }

    /// Every recorded error as one; call it only after an error was recorded.
    pub fn into_error(self) -> syn::Error {
        self.first.unwrap_or_else(|| {
            syn::Error::new(
                proc_macro2::Span::call_site(),
                "forkpipe: an error without message",
            )
        })
    }

    /// `Err` with every recorded error, or `Ok(value)` when there is none.
    pub fn finish<T>(self, value: T) -> syn::Result<T> {
        match self.first {
            Some(error) => Err(error),
            None => Ok(value),
        }
    }
}
