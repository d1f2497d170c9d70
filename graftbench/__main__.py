from graftbench.cli import main

main()
