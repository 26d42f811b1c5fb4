from fp4check.cli import main

main()
