//! A well-formed component of another world: it exports `summarise`, not
//! the `info`/`embed` pair of `soma:encoder`. The host must refuse to load it
//! and say what is missing.

wit_bindgen::generate!({
    inline: r#"
        package example:summariser@1.0.0;

        world summariser {
            export summarise: func(text: string) -> string;
        }
    "#,
});

struct Summariser;

impl Guest for Summariser {
    fn summarise(text: String) -> String {
        text.split('.').next().unwrap_or_default().to_string()
    }
}

export!(Summariser);
