"""CLI subcommands owned by kubetune.config (`kubetune validate`, `kubetune schema`)."""
