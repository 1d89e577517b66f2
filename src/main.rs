use std::process::ExitCode;

fn main() -> ExitCode {
    toolbox::sys::signals::default_sigpipe();
    match toolbox::run(std::env::args_os()) {
        Ok(status) => ExitCode::from(status),
        Err(error) => {
            toolbox::host::ui::error(format_args!("{error:#}"));
            ExitCode::from(toolbox::exit_status(&error))
        }
    }
}
