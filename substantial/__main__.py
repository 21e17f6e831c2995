from substantial.cli import main

main()
