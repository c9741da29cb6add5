from usersctl.cli import main

main()
