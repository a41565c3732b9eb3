from xares.train import main

main()
