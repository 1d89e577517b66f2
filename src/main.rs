use std::process::ExitCode;

fn main() -> ExitCode {
    match toolbox::run(std::env::args_os()) {
        Ok(status) => ExitCode::from(status),
        Err(error) => {
            eprintln!("toolbox: {error:#}");
            ExitCode::from(toolbox::exit_status(&error))
        }
    }
}
